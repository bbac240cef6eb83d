from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest

from calsync.config import Secret, Settings, env_name, parse_duration
from calsync.errors import ConfigError


def test_every_malformed_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "CALSYNC_CHANNEL_TTL": "soon",
                "CALSYNC_PUBLIC_URL": "ftp://x",
                "CALSYNC_WORKER_THREADS": "-2",
                "CALSYNC_DATABASE_URL": "mysql://x/y",
                "CALSYNC_WORKER_METRICS_PORT": "70000",
            }
        )
    text = str(info.value)
    for name in (
        "CALSYNC_CHANNEL_TTL",
        "CALSYNC_PUBLIC_URL",
        "CALSYNC_WORKER_THREADS",
        "CALSYNC_DATABASE_URL",
        "CALSYNC_WORKER_METRICS_PORT",
    ):
        assert name in text
    assert Settings.from_env({"CALSYNC_WORKER_METRICS_PORT": "9101"}).worker_metrics_port == 9101


def test_a_channel_lifetime_within_the_renewal_window_is_refused() -> None:
    """Every channel would be due for renewal as soon as it was opened: each job replaced it."""
    with pytest.raises(ConfigError, match=r"CALSYNC_CHANNEL_TTL .* must be longer than CALSYNC_RENEW_BEFORE"):
        Settings.from_env({"CALSYNC_CHANNEL_TTL": "12h"})  # the renewal window's default is a day
    with pytest.raises(ConfigError, match="CALSYNC_RENEW_BEFORE"):
        Settings.from_env({"CALSYNC_CHANNEL_TTL": "2h", "CALSYNC_RENEW_BEFORE": "2h"})
    fine = Settings.from_env({"CALSYNC_CHANNEL_TTL": "2h", "CALSYNC_RENEW_BEFORE": "30m"})
    assert fine.channel_ttl > fine.renew_before


def test_durations_accept_units() -> None:
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1.5") == parse_duration("1500ms") == timedelta(seconds=1.5)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("7d") == timedelta(days=7)
    s = Settings.from_env({"CALSYNC_RENEW_BEFORE": "2h", "CALSYNC_RECONCILE_EVERY": "30m"})
    assert (s.renew_before, s.reconcile_every) == (timedelta(hours=2), timedelta(minutes=30))


DURATIONS = [f for f in dataclasses.fields(Settings) if f.type in ("timedelta", timedelta)]


def test_every_duration_variable_reads_seconds_or_a_unit_as_before() -> None:
    assert {env_name(f) for f in DURATIONS} == {
        "CALSYNC_CHANNEL_TTL",
        "CALSYNC_RENEW_BEFORE",
        "CALSYNC_RECONCILE_EVERY",
        "CALSYNC_WEBHOOK_TIMEOUT",
        "CALSYNC_WEBHOOK_DISABLE_AFTER",
        "CALSYNC_WEBHOOK_VERIFY_TIMEOUT",
        "CALSYNC_LEASE_SECONDS",
        "CALSYNC_SYNC_MIN_INTERVAL",
        "CALSYNC_CHANGES_RETENTION",
        "CALSYNC_QUOTA_WINDOW",
    }
    # The channel's lifetime must outlast its renewal window: each is read beside a fitting other.
    beside = {"channel_ttl": {"CALSYNC_RENEW_BEFORE": "0.1"}, "renew_before": {"CALSYNC_CHANNEL_TTL": "30d"}}
    for f in DURATIONS:
        for raw, expected in (("90", 90), ("2.5", 2.5), (" 250ms ", 0.25), ("15m", 900), ("1h", 3600), ("7d", 604800)):
            read = getattr(Settings.from_env({env_name(f): raw, **beside.get(f.name, {})}), f.name)
            assert read == timedelta(seconds=expected), (f.name, raw)
        zero_allowed = f.name == "changes_retention"
        for bad in ("soon", "-5", "5 weeks", *(() if zero_allowed else ("0", "0s"))):
            with pytest.raises(ConfigError, match=env_name(f)):
                Settings.from_env({env_name(f): bad})
    assert Settings.from_env({"CALSYNC_CHANGES_RETENTION": "0"}).changes_retention == timedelta(0)


def test_the_readme_states_each_durations_default() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for f in DURATIONS:
        documented = re.search(rf"^\| `{env_name(f)}` \| `([^`]+)`", readme, flags=re.M)
        assert documented is not None and parse_duration(documented.group(1)) == f.default, f.name


def test_api_url_gets_one_trailing_slash_and_calendar_path() -> None:
    for base in ("http://127.0.0.1:8085", "http://127.0.0.1:8085/"):
        s = Settings(google_api_url=base)
        assert s.calendar_api_endpoint == "http://127.0.0.1:8085/calendar/v3/"


def test_postgres_urls_use_psycopg3() -> None:
    s = Settings.from_env({"CALSYNC_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test"})
    assert s.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_secrets_hide_in_repr() -> None:
    s = Settings.from_env({"CALSYNC_API_TOKEN": "hunter2", "CALSYNC_TOKEN_KEY": "k" * 44})
    assert "hunter2" not in repr(s)
    assert isinstance(s.api_token, Secret) and s.api_token == "hunter2"


def test_insecure_transport_only_for_loopback_http() -> None:
    assert Settings(public_url="http://127.0.0.1:8000").public_url_is_local_http
    assert Settings(public_url="http://localhost:8000").public_url_is_local_http
    assert not Settings(public_url="http://calsync.example.com").public_url_is_local_http
    assert not Settings(public_url="https://127.0.0.1").public_url_is_local_http


def test_several_api_tokens_are_read_from_one_comma_separated_variable() -> None:
    s = Settings.from_env({"CALSYNC_API_TOKEN": "old-token, new-token,"})
    assert s.api_tokens == ("old-token", "new-token")
    assert all(isinstance(t, Secret) for t in s.api_tokens) and "new-token" not in repr(s.api_tokens)
    assert Settings().api_tokens == () and Settings.from_env({"CALSYNC_API_TOKEN": " , "}).api_tokens == ()


def test_return_urls_are_prefixes_and_a_bare_origin_ends_at_its_host() -> None:
    s = Settings.from_env({"CALSYNC_RETURN_URLS": "https://app.example.com, https://crm.example.com/calendar/done"})
    assert s.return_urls == ("https://app.example.com/", "https://crm.example.com/calendar/done")
    assert Settings().return_urls == ()
    for bad in ("app.example.com", "ftp://x/", "https://u:p@app.example.com/", "https://app.example.com/?next=x", ","):
        with pytest.raises(ConfigError, match="CALSYNC_RETURN_URLS"):
            Settings.from_env({"CALSYNC_RETURN_URLS": bad})


def test_quota_settings_default_under_googles_limits_and_are_validated() -> None:
    s = Settings.from_env({})
    assert (s.quota_per_minute, s.quota_per_user_per_minute, s.quota_per_day) == (8000, 480, 900_000)
    assert s.quota_per_minute < 10_000 and s.quota_per_user_per_minute < 600 and s.quota_per_day < 1_000_000
    off = Settings.from_env({"CALSYNC_QUOTA_PER_DAY": "0", "CALSYNC_QUOTA_WINDOW": "5s"})
    assert (off.quota_per_day, off.quota_window) == (0, timedelta(seconds=5))
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"CALSYNC_QUOTA_PER_MINUTE": "-5", "CALSYNC_QUOTA_PER_USER_PER_MINUTE": "lots"})
    assert "CALSYNC_QUOTA_PER_MINUTE" in str(err.value) and "CALSYNC_QUOTA_PER_USER_PER_MINUTE" in str(err.value)


def test_trusted_proxies_default_to_none_and_must_be_a_small_whole_number() -> None:
    assert Settings.from_env({}).trusted_proxies == 0
    assert Settings.from_env({"CALSYNC_TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    for bad in ("-1", "one", "1.5", "11"):
        with pytest.raises(ConfigError, match="CALSYNC_TRUSTED_PROXIES"):
            Settings.from_env({"CALSYNC_TRUSTED_PROXIES": bad})
