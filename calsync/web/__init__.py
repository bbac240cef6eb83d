"""The web side: consent, the push receiver, the read API and the dashboard."""

# A request body past this is refused (413): by the Flask app, and by the server's worker before a
# thread would wait for it (`calsync.web.reading_worker`), so the two cannot disagree.
MAX_BODY_BYTES = 1024 * 1024
