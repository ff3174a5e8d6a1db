"""What the uplink last sent for each machine and what Prodsmart answered, kept in memory for the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANSWER_CHARS = 300  # an answer longer than this is cut: the console shows an excerpt


@dataclass(frozen=True, slots=True)
class LastCall:
    """One call and its outcome. `status` 0: no HTTP answer (network error, timeout); `answer` is
    Prodsmart's body (credentials redacted) or the error in words."""

    at: float
    kind: str
    body: dict[str, Any]
    status: int
    answer: str


class CallJournal:
    """Per machine the last call, plus running totals for the console's calls-a-minute chart.

    Only the delivery path writes it, with one dict assignment per call: nothing on the commit path.
    """

    def __init__(self) -> None:
        self.last: dict[str, LastCall] = {}
        self.sent = 0  # calls that went out (answered or not)
        self.delivered: dict[str, int] = {}  # per machine: the last count Prodsmart acknowledged

    def note(self, machine: str, call: LastCall) -> None:
        self.sent += 1
        self.last[machine] = call
        if 200 <= call.status < 300 and call.kind == "counter":
            count = call.body.get("count")
            if isinstance(count, int):
                self.delivered[machine] = count
