"""The body of a webhook message: `{"type", "timestamp", "data"}` with the whole Change in `data`.

`data` is the same dict `/api/changes` returns, so a consumer can fill a gap from the API with the
code that reads webhooks. The body is derived from the stored change only, so every retry of a
message sends the same bytes.
"""

from __future__ import annotations

from typing import Any

from calsync.clock import rfc3339
from calsync.feed.reads import change_to_dict
from calsync.store.jsontext import dumps_unicode
from calsync.store.models import Change

MAX_BODY_BYTES = 256 * 1024


def message(change: Change, account_email: str, calendar_google_id: str | None) -> dict[str, Any]:
    """The message announcing `change`: its type is the row's own."""
    return {
        "type": change.type,
        "timestamp": rfc3339(change.detected_at),
        "data": change_to_dict(change, account_email, calendar_google_id),
    }


def encode(msg: dict[str, Any], max_bytes: int = MAX_BODY_BYTES) -> str:
    """Compact JSON; an oversized message drops `before`/`after` and says so with `truncated`.

    The consumer still learns seq, event and fields, and can read the full change from
    `/api/changes?after=<seq - 1>`.
    """
    body = _dumps(msg)
    if len(body.encode()) <= max_bytes:
        return body
    data = dict(msg["data"], before=None, after=None, truncated=True)
    return _dumps(dict(msg, data=data))


def _dumps(value: Any) -> str:
    return dumps_unicode(value, separators=(",", ":"))
