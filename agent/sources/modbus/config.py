"""Modbus connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.core.schema import Duration, Strict
from agent.sources.modbus.decode import TYPES, Order, registers_of

Table = Literal["coil", "discrete", "input", "holding"]
TABLES: tuple[Table, ...] = ("coil", "discrete", "input", "holding")
BIT_TABLES = ("coil", "discrete")

# Modicon: first digit of the 5- or 6-digit form -> table.
_MODICON_TABLE: dict[str, Table] = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}
MODICON_DIGIT: dict[Table, str] = {table: digit for digit, table in _MODICON_TABLE.items()}

_PARITY = {"n": "N", "none": "N", "e": "E", "even": "E", "o": "O", "odd": "O"}
_SERIAL_ONLY = ("baudrate", "parity", "stopbits", "bytesize")


def parse_modicon(value: int | str) -> tuple[Table, int]:
    """A one-based Modicon address (40101, "00013", 400101) as (table, zero-based offset)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ValueError(f"{value!r} is not a Modicon address such as 40101 or 00013")
    if len(text) > 6:
        raise ValueError(f"{value!r} is not a Modicon address: it has more than 6 digits")
    # Ints lose their leading zeros (coil 00013 is 13): pad to the 5-digit form.
    six = len(text) == 6
    text = text.zfill(6 if six else 5)
    table = _MODICON_TABLE.get(text[0])
    if table is None:
        raise ValueError(
            f"{value!r} is not a Modicon address: the first digit must be 0 (coil), 1 (discrete input), "
            "3 (input register) or 4 (holding register)"
        )
    number = int(text[1:])
    if number == 0:
        raise ValueError(f"{value!r}: Modicon addresses are one-based ({text[0]}0001 is offset 0)")
    if number > 65536:
        raise ValueError(f"{value!r} is beyond the last Modicon address ({text[0]}65536)")
    return table, number - 1


def modicon(table: Table, offset: int) -> str:
    """The Modicon form of a zero-based offset: holding 100 -> 40101 (6 digits past 9998)."""
    digits = 5 if offset < 9999 else 6
    return MODICON_DIGIT[table] + str(offset + 1).zfill(digits - 1)


def _did_you_mean(value: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ModbusConnection(Strict):
    """One Modbus device or gateway, over TCP (`host`) or a serial line (`serial`)."""

    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial: str | None = None
    framing: Literal["tcp", "rtu", "ascii"] | None = None
    baudrate: int = Field(19200, ge=300, le=921600)
    parity: str = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(1, ge=0, le=255)
    poll: Duration = Field(1.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    retry_max: Duration = Field(60.0, gt=0)
    # Workarounds for real PLCs and gateways.
    connect_delay: Duration = 0.0
    request_delay: Duration = 0.0
    max_registers: int = Field(125, ge=1, le=125)
    max_bits: int = Field(2000, ge=1, le=2000)
    max_gap: int = Field(10, ge=0, le=124)
    max_gap_bits: int = Field(100, ge=0, le=1999)
    coils_from_zero: bool = False
    request_per_tag: bool = False

    @field_validator("host", "serial")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty: name the device (host: 192.168.10.20, serial: /dev/ttyUSB0)")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.isdigit():
            raise ValueError("is the TCP port number; a serial port goes in `serial:` (e.g. /dev/ttyUSB0)")
        return value

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, value: Any) -> str:
        parity = _PARITY.get(str(value).lower()) if not isinstance(value, bool) else None
        if parity is None:
            raise ValueError("must be none, even or odd (or N, E, O)")
        return parity

    @model_validator(mode="after")
    def _transport(self) -> ModbusConnection:
        if (self.host is None) == (self.serial is None):
            raise ValueError("give either host (Modbus TCP) or serial (Modbus RTU on a serial port)")
        if self.host is not None:
            given = [key for key in _SERIAL_ONLY if key in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]} applies only to a serial connection (serial: /dev/ttyUSB0)")
            if self.framing == "ascii":
                raise ValueError("framing ascii is for serial lines; over TCP use tcp or rtu")
        elif self.framing == "tcp":
            raise ValueError("framing tcp needs host; a serial line uses rtu or ascii")
        elif "port" in self.model_fields_set:
            raise ValueError("port is the TCP port; a serial line only needs serial: /dev/ttyUSB0")
        return self

    @property
    def effective_framing(self) -> Literal["tcp", "rtu", "ascii"]:
        return self.framing or ("tcp" if self.host is not None else "rtu")

    @property
    def endpoint(self) -> str:
        """Where the device is, for messages: 192.168.10.20:502 or /dev/ttyUSB0."""
        return f"{self.host}:{self.port}" if self.host is not None else str(self.serial)


def _table_in(data: dict[str, Any]) -> Table | None:
    """The table a raw tag mapping names, if it names exactly one valid one (for defaults)."""
    for table in TABLES:
        if table in data:
            return table
    if "address" in data:
        try:
            return parse_modicon(data["address"])[0]
        except ValueError:
            return None
    return None


class ModbusTag(Strict):
    """One value in one of the four Modbus tables, by zero-based offset or Modicon address."""

    holding: int | None = Field(None, ge=0, le=65535)
    input: int | None = Field(None, ge=0, le=65535)
    coil: int | None = Field(None, ge=0, le=65535)
    discrete: int | None = Field(None, ge=0, le=65535)
    address: int | str | None = None
    unit: int | None = Field(None, ge=0, le=255)
    type: str | None = None
    bit: int | None = Field(None, ge=0, le=15)
    order: Order | None = None
    word_order: Literal["big", "little"] | None = None
    byte_order: Literal["big", "little"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        # The type is filled in here, not at read time, so that a counter's width (and so its
        # wrap) is known from the tag map: a holding register is a uint16 unless told otherwise.
        if isinstance(data, dict) and data.get("type") is None:
            table = _table_in(data)
            if table is not None:
                bits = table in BIT_TABLES or data.get("bit") is not None
                return {**data, "type": "bool" if bits else "uint16"}
        return data

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and value not in TYPES:
            hint = _did_you_mean(value, TYPES)
            raise ValueError(f"unknown type {value!r}{hint}; one of {', '.join(TYPES)}")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_modicon(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModbusTag:
        given = [t for t in (*TABLES, "address") if getattr(self, t) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of holding, input, coil, discrete (zero-based) or address (Modicon)"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.order is not None and (self.word_order or self.byte_order):
            raise ValueError("give either order (ABCD, CDAB, BADC, DCBA) or word_order/byte_order")
        table, offset = self.location
        if table in BIT_TABLES:
            if self.type != "bool" or self.bit is not None or self.has_order:
                raise ValueError(f"a {table} is a single bit: type bool, no bit or order")
        elif self.bit is not None and (self.type != "bool" or self.has_order):
            raise ValueError("bit reads one bit of a register: type bool, no order")
        if offset + self.width > 65536:
            raise ValueError(f"{self.type} at offset {offset} runs past the last register (65535)")
        return self

    @property
    def location(self) -> tuple[Table, int]:
        """(table, zero-based offset)."""
        for table in TABLES:
            offset = getattr(self, table)
            if offset is not None:
                return table, offset
        assert self.address is not None  # guaranteed by validation
        return parse_modicon(self.address)

    @property
    def has_order(self) -> bool:
        return self.order is not None or self.word_order is not None or self.byte_order is not None

    @property
    def effective_order(self) -> Order:
        """`order`, or word_order/byte_order folded into it (word_order: little = CDAB)."""
        if self.order is not None:
            return self.order
        words_little = self.word_order == "little"
        bytes_little = self.byte_order == "little"
        orders: dict[tuple[bool, bool], Order] = {
            (False, False): "ABCD", (True, False): "CDAB", (False, True): "BADC", (True, True): "DCBA"}
        return orders[(words_little, bytes_little)]

    @property
    def width(self) -> int:
        """Registers (or bits) the tag spans."""
        if self.bit is not None or self.type is None:
            return 1
        return registers_of(self.type)
