"""Turning an MQTT payload into a value: plain text or JSON with a path, typed; PayloadError if unusable.

Rules (docs/mqtt.md, "MQTT tags", describes them for technicians):
- Without `json`, the payload is text: a number (`42`, `-1.5e3`), a boolean word (`true/false`,
  `on/off`, `yes/no`, `run/stop`, `running/stopped`, `start/started`), or any other text.
- With `json`, the payload is a JSON document and the path (`count`, `data.counters.good`,
  `items.0.qty` or `items[0].qty`) leads to a number, a boolean or a string, which then follows
  the same rules as plain text. `timestamp` and `id` are paths in the same document.
- `type` narrows the result: integer types (`uint16`...) need a whole number in range,
  `float` any number, `bool` a boolean word or 0/1, `string` keeps the text as it is.
- Counter (and waste) tags need a number whatever the type says.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agent.core.model import Scalar

ValueType = Literal[
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "string",
]
MAX_PAYLOAD = 65536  # bytes; a larger payload is not machine data but a mistake or an attack

TRUE_WORDS = frozenset({"true", "on", "yes", "run", "running", "start", "started"})
FALSE_WORDS = frozenset({"false", "off", "no", "stop", "stopped"})
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INDEX = re.compile(r"\[(\d+)\]")

Path = tuple[str | int, ...]


class PayloadError(ValueError):
    """A payload that cannot give a value; the message says why in plain words."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one payload gave: the value, and optionally its time and message id.

    `problem` notes a part that could not be read although the value could (a timestamp or
    id missing or malformed): the value is still used.
    """

    value: Scalar
    source_time: float | None = None
    msg_id: str | None = None
    problem: str | None = None


def parse_path(text: str) -> Path:
    """`data.items[0].qty` or `data.items.0.qty` -> ("data", "items", 0, "qty")."""
    parts: list[str | int] = []
    for segment in _INDEX.sub(r".\1", text).split("."):
        if not segment:
            raise ValueError(f"{text!r} is not a JSON path: write keys separated by dots, e.g. data.count")
        parts.append(int(segment) if segment.isdigit() else segment)
    return tuple(parts)


def _walk(doc: Any, path: Path, text: str) -> Any:
    node = doc
    for part in path:
        if isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            raise PayloadError(f"the JSON has no {text!r}")
    return node


_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "uint8": (0, 2**8 - 1), "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


def _number(text: str) -> int | float | None:
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return None


def _auto(value: Scalar) -> Scalar:
    """Plain text to number, boolean word or text; numbers and booleans stay as they are."""
    if isinstance(value, str):
        text = value.strip()
        number = _number(text)
        if number is not None:
            return number
        word = text.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        return text
    return value


def _as_int(value: Scalar, type_name: str) -> int:
    value = _auto(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{_show(value)} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise PayloadError(f"{_show(value)} is not a whole number, as {type_name} requires")
    low, high = _INT_RANGES[type_name]
    if not low <= value <= high:
        raise PayloadError(f"{_show(value)} is out of the {type_name} range {low}..{high}")
    return int(value)


def _as_bool(value: Scalar) -> bool:
    value = _auto(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise PayloadError(f"{_show(value)} is not a boolean (true/false, on/off, run/stop, 1/0)")


def convert(value: Scalar, type_name: ValueType | None, numeric: bool) -> Scalar:
    """Apply the tag's type (None: automatic) and, for counters, require a number."""
    if type_name == "string":
        result: Scalar = value.strip() if isinstance(value, str) else json.dumps(value)
    elif type_name == "bool":
        result = _as_bool(value)
    elif type_name == "float":
        auto = _auto(value)
        if isinstance(auto, bool) or not isinstance(auto, (int, float)):
            raise PayloadError(f"{_show(auto)} is not a number")
        result = float(auto)
    elif type_name is not None:
        result = _as_int(value, type_name)
    else:
        result = _auto(value)
    if isinstance(result, float) and not math.isfinite(result):
        raise PayloadError(f"{result} is not a usable number")
    if numeric and (isinstance(result, bool) or not isinstance(result, (int, float))):
        raise PayloadError(f"{_show(result)} is not a number, and a counter needs one")
    return result


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_time(value: Any) -> float:
    """Epoch seconds (or ms, us, ns: told apart by size) or ISO 8601 text, to epoch seconds.

    ISO text without a UTC offset is taken as the agent PC's local time.
    """
    if isinstance(value, str):
        number = _number(value.strip())
        if number is None:
            try:
                return datetime.fromisoformat(value.strip()).timestamp()
            except ValueError:
                raise PayloadError(f"timestamp {_show(value)} is not epoch seconds nor ISO 8601") from None
        value = number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"timestamp {_show(value)} is neither epoch seconds nor ISO 8601")
    seconds = float(value)
    while seconds > 1e11:  # ms, us or ns since the epoch: 1e11 s would be the year 5138
        seconds /= 1000.0
    return seconds


def id_text(value: Any) -> str:
    """A message id as text: strings as they are, whole numbers without a decimal point."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise PayloadError(f"the id {_show(value)} is not a string or a whole number")


def _document(text: str, shared: dict[str, Any] | None) -> Any:
    """The JSON document of a payload, parsed at most once per message when `shared` is given."""
    if shared is not None and "doc" in shared:
        doc = shared["doc"]
        if isinstance(doc, PayloadError):
            raise PayloadError(str(doc))
        return doc
    try:
        doc = json.loads(text)
    except ValueError:
        problem = PayloadError(f"the payload is not JSON: {_show(text)}")
        if shared is not None:
            shared["doc"] = problem
        raise problem from None
    if shared is not None:
        shared["doc"] = doc
    return doc


class Decoder:
    """Decodes the payloads of one tag; built once per tag, used for every message."""

    def __init__(self, json_path: str | None, value_type: ValueType | None, *, numeric: bool = False,
                 id_path: str | None = None, time_path: str | None = None) -> None:
        self.json_text = json_path
        self.json_path = parse_path(json_path) if json_path else None
        self.id_text = id_path
        self.id_path = parse_path(id_path) if id_path else None
        self.time_text = time_path
        self.time_path = parse_path(time_path) if time_path else None
        self.value_type = value_type
        self.numeric = numeric

    def decode(self, payload: bytes | bytearray, shared: dict[str, Any] | None = None) -> Decoded:
        """The payload's value for this tag. `shared`: a dict kept for one message while every tag
        on its topic decodes it, so that its JSON is parsed once, not once per tag."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadError(f"the payload has {len(payload)} bytes, more than {MAX_PAYLOAD}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("the payload is not UTF-8 text") from None
        if self.json_path is None:
            return Decoded(convert(text, self.value_type, self.numeric))
        doc = _document(text, shared)
        raw = _walk(doc, self.json_path, str(self.json_text))
        if raw is None or isinstance(raw, (dict, list)):
            what = "null" if raw is None else "an object or a list"
            raise PayloadError(f"{self.json_text!r} holds {what}, not a value")
        value = convert(raw, self.value_type, self.numeric)
        return self._extras(doc, value)

    def _extras(self, doc: Any, value: Scalar) -> Decoded:
        problems: list[str] = []
        when: float | None = None
        msg_id: str | None = None
        if self.time_path is not None:
            try:
                when = parse_time(_walk(doc, self.time_path, str(self.time_text)))
            except PayloadError as exc:
                problems.append(str(exc))
        if self.id_path is not None:
            try:
                msg_id = id_text(_walk(doc, self.id_path, str(self.id_text)))
            except PayloadError as exc:
                problems.append(f"{exc} (the message is applied without de-duplication)")
        return Decoded(value, when, msg_id, "; ".join(problems) or None)
