"""Building blocks shared by every configuration model: strict models and durations."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `5s`, `2m`, `1h`, `1d` or a plain number of seconds, to seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 500ms, 5s or 2m is expected")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT[match.group(2)]
    raise ValueError(f"{value!r} is not a duration: write 500ms, 5s, 2m or 1h")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def counter_modulus(type_name: str | None) -> int | None:
    """The wrap modulus a counter of this data type has (uint16 -> 65536), None if unknown."""
    if type_name is None:
        return None
    match = re.fullmatch(r"u?int(8|16|32|64)", type_name)
    return 2 ** int(match.group(1)) if match else None
