"""Outgoing webhooks: signed messages of diff-log changes to operators' endpoints."""
