"""OPC UA data values to readings: status codes to quality, source timestamps, values to scalars."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from asyncua import ua

from agent.core.model import Quality, Reading, Scalar

# Statuses that say the node itself is unusable (gone, not a variable, not for us), rather than
# its value being bad for now: such a node is set aside and tried again later.
NODE_INVALID = frozenset({
    "BadNodeIdUnknown", "BadNodeIdInvalid", "BadAttributeIdInvalid", "BadNotReadable",
    "BadUserAccessDenied", "BadIndexRangeInvalid", "BadNoMatch", "BadBrowseNameInvalid",
    "BadNotSupported", "BadMonitoredItemFilterUnsupported", "BadDataEncodingUnsupported",
})

_PLAIN = {
    "BadNodeIdUnknown": "does not exist on the server",
    "BadNodeIdInvalid": "is not a valid NodeId for this server",
    "BadNoMatch": "is not found along its browse path",
    "BadBrowseNameInvalid": "has a browse path the server cannot follow",
    "BadAttributeIdInvalid": "has no value: it is not a variable",
    "BadNotReadable": "may not be read",
    "BadUserAccessDenied": "may not be read by the agent's user",
}


class UnusableValue(Exception):
    """A good status but a value the agent cannot use (an array without index, a structure)."""


def describe(status_name: str) -> str:
    """Why a node cannot be used, e.g. `does not exist on the server (BadNodeIdUnknown)`."""
    return f"{_PLAIN.get(status_name, 'cannot be read')} ({status_name})"


def status_name(status: ua.StatusCode | None) -> str:
    return "Good" if status is None else status.name


def to_reading(connection: str, key: str, dv: ua.DataValue, index: int | None, received: float) -> Reading:
    """One reading: Good status and a usable value, or a BAD reading that says why."""
    source_time = _epoch(dv.SourceTimestamp)
    status = dv.StatusCode
    if status is not None and not status.is_good():
        # Uncertain counts as bad too: a counter must never move on a value the PLC doubts.
        return Reading(connection, key, None, Quality.BAD, source_time, received, error=status.name)
    raw = dv.Value.Value if dv.Value is not None else None
    try:
        value = scalar(raw, index)
    except UnusableValue as exc:
        return Reading(connection, key, None, Quality.BAD, source_time, received, error=str(exc))
    return Reading(connection, key, value, Quality.GOOD, source_time, received)


def _epoch(stamp: dt.datetime | None) -> float | None:
    if stamp is None:
        return None
    if stamp.tzinfo is None:  # asyncua gives UTC; older versions without tzinfo
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def scalar(raw: Any, index: int | None = None) -> Scalar:
    """A value as a plain bool/int/float/str; an array element when `index` is given."""
    if isinstance(raw, list):
        if index is None:
            raise UnusableValue(f"is an array of {len(raw)} values: add index: to the tag to pick one")
        if index >= len(raw):
            raise UnusableValue(f"is an array of {len(raw)} values: it has no index {index}")
        raw = raw[index]
    elif index is not None:
        raise UnusableValue("is not an array: remove index: from the tag")
    if isinstance(raw, (bool, str)):
        return raw
    if isinstance(raw, enum.Enum):
        return int(raw.value)
    if isinstance(raw, (int, float)):
        return raw
    return _other(raw)


def _other(raw: Any) -> Scalar:
    if raw is None:
        raise UnusableValue("has no value (null)")
    if isinstance(raw, dt.datetime):
        epoch = _epoch(raw)
        assert epoch is not None
        return epoch
    if isinstance(raw, ua.LocalizedText):
        return raw.Text or ""
    if isinstance(raw, ua.QualifiedName):
        return raw.Name or ""
    if isinstance(raw, ua.NodeId):
        return raw.to_string()
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).hex()
    if isinstance(raw, uuid.UUID):
        return str(raw)
    raise UnusableValue(f"has a structured value ({type(raw).__name__}) the agent cannot use")
