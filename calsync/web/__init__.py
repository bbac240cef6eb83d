"""The web side: consent, the push receiver, the read API and the dashboard."""
