"""Register words to values and back: every data type in every word/byte order.

The order names the byte sequence the device puts on the wire for a value whose
big-endian bytes are A B C D (or A..H for 64-bit values):

- ``ABCD``: big-endian words, most significant word first (Modbus default).
- ``CDAB``: words swapped, least significant word first (``word_order: little``).
- ``BADC``: bytes swapped inside each word, words most significant first.
- ``DCBA``: fully little-endian (words and bytes swapped).

For 16-bit types only the byte part matters: BADC and DCBA swap the two bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
ORDERS: tuple[Order, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

# type -> (struct code, registers)
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float64": ("d", 4),
}
NUMERIC_TYPES: tuple[str, ...] = tuple(_FORMATS)
TYPES: tuple[str, ...] = ("bool", *NUMERIC_TYPES)


def registers_of(type_name: str) -> int:
    """How many 16-bit registers a value of this type occupies (bool: one)."""
    return 1 if type_name == "bool" else _FORMATS[type_name][1]


def _wire_to_big(data: bytes, order: Order) -> bytes:
    """Reorder the bytes as received into big-endian (ABCD) order; the mapping is its own inverse."""
    if order in ("BADC", "DCBA"):
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    if order in ("CDAB", "DCBA") and len(data) > 2:
        words = [data[i : i + 2] for i in range(0, len(data), 2)]
        data = b"".join(reversed(words))
    return data


def decode(registers: Sequence[int], type_name: str, order: Order = "ABCD") -> int | float | bool:
    """The value of `registers` (exactly as many as the type needs) read as `type_name`."""
    if type_name == "bool":
        return registers[0] != 0
    code, count = _FORMATS[type_name]
    if len(registers) != count:
        raise ValueError(f"{type_name} needs {count} registers, got {len(registers)}")
    wire = b"".join(r.to_bytes(2, "big") for r in registers)
    big = _wire_to_big(wire, order)
    value: int | float = struct.unpack(">" + code, big)[0]
    if code == "f" and math.isfinite(value):
        value = _shortest_float32(value, big)
    return value


def _shortest_float32(value: float, packed: bytes) -> float:
    """The shortest decimal that is the same float32: 184.57 must not reach Prodsmart as
    184.57000732421875 (the float64 the float32 widens to)."""
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def encode(value: int | float | bool, type_name: str, order: Order = "ABCD") -> list[int]:
    """The registers a device in `order` would hold for `value` (tests, simulators, probe)."""
    if type_name == "bool":
        return [1 if value else 0]
    code, _ = _FORMATS[type_name]
    big = struct.pack(">" + code, value)
    wire = _wire_to_big(big, order)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def bit_of(register: int, bit: int) -> bool:
    """Bit `bit` of a register value, 0 being the least significant."""
    return bool((register >> bit) & 1)


@dataclass(frozen=True, slots=True)
class Codec:
    """How one tag turns its raw words or bits into a value."""

    type: str = "uint16"
    order: Order = "ABCD"
    bit: int | None = None

    @property
    def width(self) -> int:
        """Registers (or bits, for bit tables) the tag spans."""
        return 1 if self.bit is not None else registers_of(self.type)

    def value(self, raw: Sequence[int] | Sequence[bool]) -> int | float | bool:
        if self.bit is not None:
            return bit_of(int(raw[0]), self.bit)
        if isinstance(raw[0], bool):
            return bool(raw[0])
        return decode([int(r) for r in raw], self.type, self.order)


def finite(value: int | float | bool) -> bool:
    """False for NaN and infinities, which a float register holds when a sensor is broken."""
    return not (isinstance(value, float) and not math.isfinite(value))
