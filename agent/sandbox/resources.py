"""The read-only GET /downtimes resource, for checking what the machine endpoints did."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from agent.sandbox.calls import Refused

PAGE_SIZE = 25


def list_downtimes(downtimes: dict[str, list[dict[str, Any]]], query: dict[str, list[str]]) -> list[Any]:
    """One page (25 a page, `page` from 1) of downtimes, oldest first, filtered like Prodsmart's."""
    machine = _one(query, "machine")
    after = _one(query, "start-time-after")
    since = _parse_time(after) if after is not None else None
    page = _page(_one(query, "page"))
    rows = [(code, d) for code, items in downtimes.items() if machine in (None, code) for d in items
            if since is None or d["start"] > since]
    rows.sort(key=lambda row: row[1]["start"])
    return [_item(code, d) for code, d in rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]]


def _item(code: str, downtime: dict[str, Any]) -> dict[str, Any]:
    start, end = downtime["start"], downtime["end"]
    return {
        "start-time": _format_time(start),
        "end-time": None if end is None else _format_time(end),
        "downtime-type": downtime["type"],
        "machines": [{"code": code, "name": code}],
        "time-spent": round((time.time() if end is None else end) - start),
    }


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Refused(400, f"{name!r} is given more than once")
    return values[0]


def _page(value: str | None) -> int:
    if value is None:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise Refused(400, f"'page' must be a whole number from 1, not {value!r}")
    return int(value)


def _parse_time(value: str) -> float:
    # Without a zone designator Prodsmart applies the company's zone; the sandbox's company is in UTC.
    text = value[:-1] if value.endswith("Z") else value
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise Refused(400, f"'start-time-after' must look like YYYY-MM-DDThh:mm:ssZ, not {value!r}") from None


def _format_time(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
