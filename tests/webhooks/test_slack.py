from __future__ import annotations

from calsync.webhooks.slack import slack_message, summary_line
from tests.webhooks.support import event

CAL = "Team calendar"


def test_moved_event_says_from_and_to_in_its_own_time_zone() -> None:
    before = event(start="2026-12-03T10:00:00+01:00", end="2026-12-03T10:30:00+01:00")
    after = event(start="2026-12-03T09:30:00Z", end="2026-12-03T10:00:00Z")  # 10:30 in Berlin
    assert slack_message("updated", ["end", "start"], before, after, calendar_name=CAL) == {
        "text": 'Team calendar: "Standup" moved 10:00 → 10:30 (Thu 3 Dec)'
    }


def test_moved_to_another_day_names_both_days() -> None:
    after = event(start="2026-12-04T10:30:00+01:00", end="2026-12-04T11:00:00+01:00")
    assert (
        summary_line("updated", ["start", "end"], event(), after, calendar_name=CAL)
        == 'Team calendar: "Standup" moved Thu 3 Dec 10:00 → Fri 4 Dec 10:30'
    )


def test_created_event_shows_its_time_span() -> None:
    assert (
        summary_line("created", [], None, event(), calendar_name=CAL)
        == 'Team calendar: "Standup" created, 10:00–10:30 (Thu 3 Dec)'
    )


def test_deleted_event_says_when_it_was() -> None:
    assert (
        summary_line("deleted", [], event(), None, calendar_name=CAL)
        == 'Team calendar: "Standup" cancelled, was 10:00–10:30 (Thu 3 Dec)'
    )


def test_all_day_event_and_other_field_changes() -> None:
    holiday = {"summary": "Holiday", "start": {"date": "2026-12-24"}, "end": {"date": "2026-12-25"}}
    assert (
        summary_line("created", [], None, holiday, calendar_name=CAL)
        == 'Team calendar: "Holiday" created (Thu 24 Dec, all day)'
    )
    after = event(location="Room 2", description="agenda")
    assert (
        summary_line("updated", ["description", "location"], event(), after, calendar_name=CAL)
        == 'Team calendar: "Standup" updated: description, location (Thu 3 Dec)'
    )


def test_renamed_event_shows_old_and_new_names() -> None:
    assert (
        summary_line("updated", ["summary"], event(), event(summary="Daily"), calendar_name=CAL)
        == 'Team calendar: "Standup" renamed to "Daily" (Thu 3 Dec)'
    )


def test_slack_control_characters_are_escaped() -> None:
    text = summary_line("created", [], None, event(summary="<!channel> & co"), calendar_name="R&D")
    assert text.startswith('R&amp;D: "&lt;!channel&gt; &amp; co" created')
