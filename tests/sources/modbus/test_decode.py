"""Decoding of every type in every word/byte order, against known byte patterns."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.modbus.decode import ORDERS, Codec, Order, bit_of, decode, encode, registers_of

# (type, value, registers as a device in ABCD, CDAB, BADC, DCBA order sends them)
KNOWN: list[tuple[str, int | float, dict[str, list[int]]]] = [
    ("uint16", 0x1234, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    ("int16", -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    ("int16", 0x0102, {"ABCD": [0x0102], "CDAB": [0x0102], "BADC": [0x0201], "DCBA": [0x0201]}),
    ("uint32", 0x12345678, {"ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
                            "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412]}),
    ("int32", -2, {"ABCD": [0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF],
                   "BADC": [0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF]}),
    ("int32", -123456789, {"ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4],
                           "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8]}),
    ("float32", 123.456001, {"ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
                             "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]}),
    ("float32", -1.5, {"ABCD": [0xBFC0, 0x0000], "CDAB": [0x0000, 0xBFC0],
                       "BADC": [0xC0BF, 0x0000], "DCBA": [0x0000, 0xC0BF]}),
    ("uint64", 0x0102030405060708, {"ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
                                    "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
                                    "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
                                    "DCBA": [0x0807, 0x0605, 0x0403, 0x0201]}),
    ("int64", -2, {"ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
                   "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]}),
    ("float64", 1.0, {"ABCD": [0x3FF0, 0, 0, 0], "CDAB": [0, 0, 0, 0x3FF0],
                      "BADC": [0xF03F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF03F]}),
    ("float64", -2.5e10, {"ABCD": [0xC217, 0x4876, 0xE800, 0x0000],
                          "CDAB": [0x0000, 0xE800, 0x4876, 0xC217],
                          "BADC": [0x17C2, 0x7648, 0x00E8, 0x0000],
                          "DCBA": [0x0000, 0x00E8, 0x7648, 0x17C2]}),
]


@pytest.mark.parametrize(("type_name", "value", "patterns"), KNOWN,
                         ids=[f"{t}:{v}" for t, v, _ in KNOWN])
@pytest.mark.parametrize("order", ORDERS)
def test_known_patterns_decode_in_every_order(type_name: str, value: float, patterns: dict[str, list[int]],
                                              order: Order) -> None:
    registers = patterns[order]
    decoded = decode(registers, type_name, order)
    if type_name.startswith("float"):
        assert decoded == pytest.approx(value, rel=1e-6)
    else:
        assert decoded == value
    assert encode(decoded, type_name, order) == registers


def test_the_known_float_patterns_are_really_ieee() -> None:
    assert struct.pack(">f", 123.456001).hex() == "42f6e979"
    assert struct.pack(">d", -2.5e10).hex() == "c2174876e8000000"


@pytest.mark.parametrize(("type_name", "count"), [("bool", 1), ("int16", 1), ("uint16", 1), ("int32", 2),
                                                  ("uint32", 2), ("float32", 2), ("int64", 4), ("uint64", 4),
                                                  ("float64", 4)])
def test_register_counts(type_name: str, count: int) -> None:
    assert registers_of(type_name) == count
    assert Codec(type_name).width == count


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "uint32")


def test_bits_of_a_register_count_from_the_least_significant() -> None:
    assert [bit_of(0b1000_0000_0000_0101, b) for b in (0, 1, 2, 15)] == [True, False, True, True]
    assert Codec("bool", bit=15).value([0x8000]) is True
    assert Codec("bool", bit=14).value([0x8000]) is False
    assert Codec("bool", bit=3).width == 1


def test_bool_from_a_bit_table_and_from_a_register() -> None:
    assert Codec("bool").value([True]) is True
    assert Codec("bool").value([False]) is False
    assert Codec("bool").value([7]) is True
    assert Codec("bool").value([0]) is False


def test_word_order_mixup_is_visible() -> None:
    # The most common commissioning mistake: a CDAB counter read as ABCD.
    registers = encode(70000, "uint32", "CDAB")
    assert decode(registers, "uint32", "ABCD") == 70000 % 65536 * 65536 + 1
    assert decode(registers, "uint32", "CDAB") == 70000


@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "int64", "uint64"]), st.sampled_from(ORDERS),
       st.data())
def test_integer_round_trip(type_name: str, order: Order, data: st.DataObject) -> None:
    bits = int(type_name.removeprefix("u").removeprefix("int"))
    signed = not type_name.startswith("u")
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    value = data.draw(st.integers(low, high))
    registers = encode(value, type_name, order)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(registers, type_name, order) == value


@given(st.floats(allow_nan=False, width=32), st.sampled_from(ORDERS))
def test_float32_round_trip(value: float, order: Order) -> None:
    back = decode(encode(value, "float32", order), "float32", order)
    assert struct.pack(">f", back) == struct.pack(">f", value)  # the same float32
    assert float(f"{back:.9g}") == back  # a decimal of at most 9 significant digits


def test_float32_is_sent_as_the_decimal_the_plc_shows() -> None:
    assert decode(encode(184.57, "float32"), "float32") == 184.57
    assert decode(encode(0.1, "float32", "CDAB"), "float32", "CDAB") == 0.1


@given(st.floats(allow_nan=True), st.sampled_from(ORDERS))
def test_float64_round_trip(value: float, order: Order) -> None:
    back = decode(encode(value, "float64", order), "float64", order)
    assert back == value or (math.isnan(value) and math.isnan(back))
