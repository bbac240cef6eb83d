"""Everything that talks to Google: OAuth consent and the Calendar API."""
