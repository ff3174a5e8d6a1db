"""MQTT topic filters: validation, matching, and a cached router from topics to tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_CACHED_TOPICS = 10_000  # a `#` subscription on a busy broker must not grow memory without bound


def filter_problem(text: str) -> str | None:
    """Why `text` is not a valid MQTT topic filter, in plain words; None if it is valid."""
    if not text:
        return "a topic cannot be empty"
    if "\x00" in text:
        return "a topic cannot contain a NUL character"
    if len(text.encode("utf-8")) > 65535:
        return "a topic is at most 65535 bytes long"
    if text.startswith("$share/"):
        return "shared subscriptions ($share/...) are not supported: each agent needs every message"
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one, e.g. plant/line1/#"
        if "+" in level and level != "+":
            return "'+' must be a whole level, e.g. plant/+/count"
    return None


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def matches(filter_levels: Sequence[str], topic: str) -> bool:
    """Whether a topic matches a filter split into levels (MQTT 3.1.1 section 4.7)."""
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # wildcards never match $SYS-style topics at the first level
    levels = topic.split("/")
    for i, want in enumerate(filter_levels):
        if want == "#":
            return True
        if i >= len(levels):
            return False
        if want != "+" and want != levels[i]:
            return False
    return len(levels) == len(filter_levels)


class Router(Generic[T]):
    """Finds the targets whose filter matches a topic: exact topics by dict, wildcards cached.

    Several tags may subscribe to overlapping filters; a message feeds every one of them.
    """

    def __init__(self, routes: Sequence[tuple[str, T]]) -> None:
        self._exact: dict[str, list[T]] = {}
        self._wild: list[tuple[tuple[str, ...], T]] = []
        for topic_filter, target in routes:
            if has_wildcard(topic_filter):
                self._wild.append((tuple(topic_filter.split("/")), target))
            else:
                self._exact.setdefault(topic_filter, []).append(target)
        self._cache: dict[str, tuple[T, ...]] = {}

    def lookup(self, topic: str) -> tuple[T, ...]:
        found = self._cache.get(topic)
        if found is None:
            found = (*self._exact.get(topic, ()), *(t for f, t in self._wild if matches(f, topic)))
            if len(self._cache) >= MAX_CACHED_TOPICS:
                self._cache.clear()
            self._cache[topic] = found
        return found
