"""JSON in and out for any JSON-legal value, lone surrogates and `\\u0000` included.

orjson is the fast path everywhere, but it refuses a lone surrogate (`"\\ud800"`) both ways, and JSON
allows one, so an event can hold it. Each helper here falls back to the json module for what orjson
refuses, so one such event never turns a read into a 500. What leaves calsync as bytes is escaped
ASCII JSON in that case (a lone surrogate has no UTF-8 form).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    """Parse JSON text calsync stored or was sent; ValueError only for text that is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(value: Any, *, option: int | None = None) -> bytes:
    """UTF-8 JSON for an HTTP answer (orjson `option`s apply on the fast path)."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError:  # a lone surrogate, an integer past 64 bits: the json module, all non-ASCII escaped
        return json.dumps(value, default=_iso).encode("ascii")


def dumps_text(value: Any) -> str:
    """JSON text as short as orjson writes it; escaped only where UTF-8 has no form for a character."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def dumps_unicode(value: Any, **kwargs: Any) -> str:
    """The json module's text with non-ASCII kept, unless some string cannot be UTF-8 (a lone
    surrogate): then all of it escaped. The result always encodes, so it can be signed and sent."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, **kwargs)
    return text


def printable(text: str) -> str:
    """A string every engine stores and every encoder writes: NUL and lone surrogates escaped."""
    if "\x00" not in text and text.isascii():
        return text
    out = text.replace("\x00", "\\x00")
    try:
        out.encode()
    except UnicodeEncodeError:
        out = out.encode("utf-8", "backslashreplace").decode()
    return out


def _iso(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    if isoformat is None:
        raise TypeError(f"{type(value).__name__} is not JSON")
    return isoformat()
