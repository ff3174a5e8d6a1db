"""Modbus connection and tag configuration: the example, Modicon addresses, orders, plain errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config.loader import load_config, parse_config
from agent.config.problems import ConfigError
from agent.sources.modbus.config import ModbusConnection, ModbusTag, modicon, parse_modicon

EXAMPLE = Path("/work/shared/examples/agent.yaml")


def test_the_example_loads_with_its_little_word_order() -> None:
    config = load_config(EXAMPLE)
    conn = config.connections["press-plc"]
    assert isinstance(conn.config, ModbusConnection)
    assert conn.config.poll == 0.5 and conn.config.unit == 1 and conn.config.effective_framing == "tcp"
    press = config.machines["PRESS-01"]
    assert press.counter is not None
    counter = conn.tags[press.counter.tag].spec
    assert isinstance(counter, ModbusTag)
    assert counter.location == ("holding", 100)
    assert counter.effective_order == "CDAB"
    assert press.counter.modulus == 2**32
    assert press.waste["Scrap"].modulus == 2**16
    assert press.running is not None
    assert conn.tags[press.running.tag].spec.model_dump(exclude_none=True) == {"coil": 12, "type": "bool"}


@pytest.mark.parametrize(("address", "table", "offset"), [
    (1, "coil", 0), (13, "coil", 12), ("00013", "coil", 12), (9999, "coil", 9998),
    (10001, "discrete", 0), (30031, "input", 30), (40001, "holding", 0), (40101, "holding", 100),
    (49999, "holding", 9998), ("040101", "coil", 40100), (400101, "holding", 100),
    (465536, "holding", 65535), (300001, "input", 0), (100001, "discrete", 0), ("000001", "coil", 0),
])
def test_modicon_addresses_are_one_based(address: int | str, table: str, offset: int) -> None:
    assert parse_modicon(address) == (table, offset)


@pytest.mark.parametrize(("address", "message"), [
    (40000, "one-based"), (0, "one-based"), (20001, "first digit"), (50001, "first digit"),
    (465537, "beyond"), ("4x0101", "not a Modicon address"), (1234567, "more than 6 digits"),
    (True, "not a Modicon address"),
])
def test_bad_modicon_addresses(address: int | str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_modicon(address)


@pytest.mark.parametrize(("table", "offset", "text"), [
    ("holding", 100, "40101"), ("coil", 12, "00013"), ("input", 0, "30001"), ("discrete", 9998, "19999"),
    ("holding", 9999, "410000"), ("holding", 65535, "465536"),
])
def test_modicon_form_of_an_offset(table: str, offset: int, text: str) -> None:
    assert modicon(table, offset) == text  # type: ignore[arg-type]
    assert parse_modicon(text) == (table, offset)


def test_address_and_offset_name_the_same_register() -> None:
    by_address = ModbusTag.model_validate({"address": 40101, "type": "uint32"})
    by_offset = ModbusTag.model_validate({"holding": 100, "type": "uint32"})
    assert by_address.location == by_offset.location == ("holding", 100)


@pytest.mark.parametrize(("spec", "order"), [
    ({}, "ABCD"), ({"word_order": "big"}, "ABCD"), ({"word_order": "little"}, "CDAB"),
    ({"byte_order": "little"}, "BADC"), ({"word_order": "little", "byte_order": "little"}, "DCBA"),
    ({"order": "BADC"}, "BADC"),
])
def test_word_and_byte_order_fold_into_order(spec: dict[str, str], order: str) -> None:
    tag = ModbusTag.model_validate({"holding": 0, "type": "float32", **spec})
    assert tag.effective_order == order


@pytest.mark.parametrize(("spec", "type_name", "width"), [
    ({"holding": 1}, "uint16", 1), ({"input": 1}, "uint16", 1), ({"coil": 1}, "bool", 1),
    ({"discrete": 1}, "bool", 1), ({"holding": 1, "bit": 3}, "bool", 1), ({"address": 40001}, "uint16", 1),
    ({"address": 10001}, "bool", 1), ({"holding": 1, "type": "float64"}, "float64", 4),
])
def test_default_types_so_counters_know_their_width(spec: dict[str, int], type_name: str, width: int) -> None:
    tag = ModbusTag.model_validate(spec)
    assert tag.type == type_name
    assert tag.width == width


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "give exactly one of"),
    ({"holding": 1, "input": 2}, "not input and holding"),
    ({"coil": 1, "type": "uint16"}, "a coil is a single bit"),
    ({"discrete": 1, "bit": 2}, "a discrete is a single bit"),
    ({"holding": 1, "bit": 16}, "less than or equal to 15"),
    ({"holding": 1, "bit": 2, "type": "uint16"}, "bit reads one bit"),
    ({"holding": 1, "type": "unit16"}, "did you mean 'uint16'"),
    ({"holding": 1, "order": "ABCD", "word_order": "little"}, "either order"),
    ({"holding": 1, "order": "CBAD"}, "ABCD"),
    ({"holding": 65535, "type": "uint32"}, "runs past"),
    ({"holding": -1}, "greater than or equal to 0"),
    ({"address": 20001}, "first digit"),
    ({"holding": 1, "unit": 256}, "less than or equal to 255"),
])
def test_bad_tags(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusTag.model_validate(spec)


def test_serial_connection() -> None:
    conn = ModbusConnection.model_validate({"serial": "/dev/ttyUSB0", "baudrate": 9600, "parity": "even",
                                            "stopbits": 2, "unit": 7})
    assert (conn.effective_framing, conn.parity, conn.endpoint) == ("rtu", "E", "/dev/ttyUSB0")


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "either host"),
    ({"host": "a", "serial": "/dev/ttyS0"}, "either host"),
    ({"host": "a", "baudrate": 9600}, "baudrate applies only to a serial"),
    ({"host": "a", "port": "/dev/ttyUSB0"}, "serial port goes in `serial:`"),
    ({"serial": "/dev/ttyS0", "port": 502}, "port is the TCP port"),
    ({"serial": "/dev/ttyS0", "parity": "X"}, "none, even or odd"),
    ({"serial": "/dev/ttyS0", "framing": "tcp"}, "framing tcp needs host"),
    ({"host": "a", "framing": "ascii"}, "ascii is for serial"),
    ({"host": "a", "max_registers": 126}, "less than or equal to 125"),
    ({"host": "a", "poll": 0}, "greater than 0"),
    ({"host": "a", "pol": "1s"}, "Extra inputs"),
])
def test_bad_connections(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusConnection.model_validate(settings)


TEMPLATE = """
connections:
  plc:
    modbus: {{host: 10.0.0.1, unit: 1, poll: 200ms{conn}}}
machines:
  M1:
    connection: plc
    counter: {counter}
    parameters:
      temp: {{input: 30, type: float32, scale: 0.1, deadband: 0.5}}
"""


def test_errors_name_the_file_line_and_key() -> None:
    text = TEMPLATE.format(conn=", baudrate: 9600", counter="{holding: 100, type: unit32, mode: total}")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "agent.yaml")
    lines = str(err.value).splitlines()
    assert lines == [
        "agent.yaml:4: connections.plc.modbus: baudrate applies only to a serial connection "
        "(serial: /dev/ttyUSB0)",
        "agent.yaml:8: machines.M1.counter.type: unknown type 'unit32' (did you mean 'uint32'?); one of "
        "bool, int16, uint16, int32, uint32, float32, int64, uint64, float64 (got 'unit32')",
    ]


def test_unknown_tag_key_suggests_a_modbus_or_role_key() -> None:
    text = TEMPLATE.format(conn="", counter="{holding: 100, wordorder: little}")
    with pytest.raises(ConfigError, match=r"unknown key 'wordorder' \(did you mean 'word_order'\?\) "
                                          r"for a modbus tag"):
        parse_config(text, "agent.yaml")


def test_role_keys_stay_with_the_core_and_a_modicon_counter_gets_its_width() -> None:
    text = TEMPLATE.format(conn=", max_gap: 4, request_delay: 20ms", counter="{address: 40101, mode: total}")
    config = parse_config(text, "agent.yaml")
    machine = config.machines["M1"]
    assert machine.counter is not None and machine.counter.modulus == 65536
    assert machine.parameters["temp"].scale == 0.1
    conn = config.connections["plc"].config
    assert isinstance(conn, ModbusConnection)
    assert (conn.max_gap, conn.request_delay) == (4, 0.02)
