"""Partial responses: Google's ``fields`` selector (``kind,items(id,start/dateTime)``)."""

from __future__ import annotations

from typing import Any

from .errors import ApiError

Selection = dict[str, "Selection | None"]


def parse(text: str) -> Selection:
    """Parse a ``fields`` value into a tree of selected keys (``None`` = the whole value)."""
    selection, rest = _parse_list(text.replace(" ", ""), 0)
    if rest != len(text.replace(" ", "")) or not selection:
        raise _invalid(text)
    return selection


def select(value: Any, selection: Selection | None) -> Any:
    """Keep only the selected keys (applied to every element of lists)."""
    if selection is None:
        return value
    if isinstance(value, list):
        return [select(item, selection) for item in value]
    if not isinstance(value, dict):
        return value
    if "*" in selection:
        return value
    return {key: select(value[key], sub) for key, sub in selection.items() if key in value}


def _parse_list(text: str, pos: int) -> tuple[Selection, int]:
    out: Selection = {}
    while pos < len(text) and text[pos] != ")":
        path_end = pos
        while path_end < len(text) and text[path_end] not in ",()":
            path_end += 1
        path = text[pos:path_end].split("/")
        if not all(path):
            raise _invalid(text)
        sub: Selection | None = None
        pos = path_end
        if pos < len(text) and text[pos] == "(":
            sub, pos = _parse_list(text, pos + 1)
            if pos >= len(text) or text[pos] != ")" or not sub:
                raise _invalid(text)
            pos += 1
        _merge(out, path, sub)
        if pos < len(text) and text[pos] == ",":
            pos += 1
    return out, pos


def _merge(out: Selection, path: list[str], sub: Selection | None) -> None:
    node = out
    for key in path[:-1]:
        child = node.get(key, {})
        if child is None:  # the whole value is already selected
            return
        node[key] = child
        node = child
    last = path[-1]
    if last not in node:
        node[last] = sub
    elif (existing := node[last]) is None or sub is None:
        node[last] = None
    else:
        existing.update(sub)


def _invalid(text: str) -> ApiError:
    return ApiError(400, "invalidParameter", f"Invalid field selection {text}", location="fields")
