"""What the mirror answers without calling Google: calendars and accounts, event pages,
occurrences, free/busy and the dashboard's week."""
