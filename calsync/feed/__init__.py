"""The change feed: the spine every other part writes to or reads from.

One row per event change or lifecycle step, numbered by a global `seq` in commit order. The sync,
accounts, push and webhooks all import it; it imports none of them.
"""
