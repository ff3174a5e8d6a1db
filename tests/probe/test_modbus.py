"""`prodsmart-edge probe modbus`: raw registers decoded every way, configured tags, the read plan."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

from agent.config.loader import load_config
from agent.config.specs import AgentConfig
from agent.probe import modbus as probe
from tests.support.fixtures_modbus import ModbusServer, modbus_server

__all__ = ["modbus_server"]

Start = Callable[..., ModbusServer]

CONFIG = """
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {port}, unit: 1, poll: 500ms, timeout: 500ms}}
  other-plc:
    modbus: {{host: 127.0.0.1, port: {port}, unit: 2}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{holding: 100, type: uint32, word_order: little}}
    waste:
      Scrap: {{holding: 102, type: uint16}}
    running: {{coil: 12}}
    stop_reason:
      tag: {{address: 40111}}
    parameters:
      die_temperature: {{input: 30, type: float32, deadband: 0.5}}
      missing: {{holding: 300}}
  PRESS-02:
    connection: press-plc
    counter: {{holding: 200, unit: 2}}
  OTHER:
    connection: other-plc
    counter: {{holding: 0}}
"""


def parse(*argv: str, machine: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.machine = machine  # added by the CLI, like --config
    return args


async def run(*argv: str, config: AgentConfig | None = None, machine: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = await probe.run(parse(*argv, machine=machine), config, out)
    return code, out.getvalue()


def write_config(tmp_path: Path, port: int) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG.format(port=port), encoding="utf-8")
    return load_config(path)


async def test_raw_registers_decoded_as_every_type_and_order(modbus_server: Start) -> None:
    server = modbus_server()
    server.set_value(1, "holding", 100, 123456, "uint32", "CDAB")
    server.set(1, "holding", 102, [0xFFFE, 1])
    code, text = await run("--host", "127.0.0.1", "--port", str(server.port), "--address", "40101")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"Modbus TCP 127.0.0.1:{server.port}, unit 1 holding 100..103 (40101..40104)"
    assert lines[2].split() == ["100", "40101", "0xE240", "57920", "-7616", "11100010", "01000000"]
    assert lines[4].split() == ["102", "40103", "0xFFFE", "65534", "-2", "11111111", "11111110"]
    decoded = {line.split()[0]: line for line in lines[8:]}
    assert lines[7] == "Decoded from holding 100 (40101):"
    header = lines[8]
    for name in ("ABCD big-endian", "CDAB word_order: little", "BADC bytes swapped", "DCBA little-endian"):
        assert name in header
    # The counter shows up under CDAB only: the column a technician must pick.
    cdab = header.index("CDAB")
    uint32 = decoded["uint32"]
    assert uint32[cdab:].split()[0] == "123456"
    assert uint32.split()[1] == str((0xE240 << 16) + 1)
    assert decoded["float64"].split()[1] != "(needs"
    assert len(decoded) == 9  # header + 8 numeric types


async def test_few_registers_say_what_longer_types_need(modbus_server: Start) -> None:
    server = modbus_server()
    code, text = await run("--host", "127.0.0.1", "--port", str(server.port), "--input", "0", "--count", "2")
    assert code == 0
    assert "int64    (needs 4 registers)" in text
    assert "float32  0" in text


async def test_coils_print_one_bit_a_line(modbus_server: Start) -> None:
    server = modbus_server()
    server.set(1, "coil", 12, [True, False, True])
    code, text = await run("--host", "127.0.0.1", "--port", str(server.port), "--coil", "12", "--count", "3")
    assert code == 0
    assert text.splitlines()[1:] == ["offset  modicon  value", "12      00013    1", "13      00014    0",
                                     "14      00015    1"]


async def test_a_refused_address_and_an_unreachable_device_are_plain_sentences(modbus_server: Start) -> None:
    server = modbus_server()
    code, text = await run("--host", "127.0.0.1", "--port", str(server.port), "--holding", "5000")
    assert code == 1
    assert text.strip() == ("Cannot read unit 1 holding 5000..5003 (45001..45004) at "
                            f"127.0.0.1:{server.port}: "
                            "the device refused the request: exception 2 (illegal data address)")
    server.stop()
    code, text = await run("--host", "127.0.0.1", "--port", str(server.port), "--holding", "0")
    assert code == 1
    assert "connection refused or unreachable" in text


async def test_every_tag_of_a_machine_raw_and_decoded(modbus_server: Start, tmp_path: Path) -> None:
    server = modbus_server({"units": {"1": {"registers": 250}, "2": {}}})
    config = write_config(tmp_path, server.port)
    server.set_value(1, "holding", 100, 70000, "uint32", "CDAB")
    server.set(1, "holding", 102, [42])
    server.set(1, "coil", 12, [True])
    server.set_value(1, "input", 30, 181.25, "float32")
    server.set(2, "holding", 200, [9])
    code, text = await run(config=config, machine="PRESS-01")
    assert code == 1, text  # one tag cannot be read
    rows = {line.split("  ")[0]: line for line in text.splitlines()[2:]}
    assert "0x1170 0x0001" in rows["PRESS-01 counter"] and rows["PRESS-01 counter"].endswith("70000")
    assert "CDAB" in rows["PRESS-01 counter"]
    assert rows["PRESS-01 waste Scrap"].endswith("42")
    assert rows["PRESS-01 running"].endswith("True")
    assert rows["PRESS-01 stop_reason"].endswith("0")
    assert rows["PRESS-01 parameter die_temperature"].endswith("181.25")
    assert "BAD: the device refused the request: exception 2 (illegal data address)" in \
        rows["PRESS-01 parameter missing"]
    assert "PRESS-02 counter" not in rows
    code, text = await run("--connection", "press-plc", config=config)
    assert "PRESS-02 counter" in text and "unit 2 holding 200 (40201)" in text


async def test_a_configured_connection_can_be_probed_at_any_address(modbus_server: Start,
                                                                    tmp_path: Path) -> None:
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(2, "holding", 7, [77])
    config = write_config(tmp_path, server.port)
    code, text = await run("--connection", "other-plc", "--holding", "7", "--count", "1", config=config)
    assert code == 0
    assert "unit 2 holding 7..7 (40008..40008)" in text and "0x004D" in text


async def test_the_plan_counts_requests_per_cycle(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1502)
    code, text = await run("--plan", config=config)
    assert code == 0
    assert text.splitlines() == [
        "press-plc: Modbus TCP 127.0.0.1:1502, poll 0.5s, gaps read through up to 10 registers / 100 bits",
        "  5 request(s) per poll cycle for 7 tag(s)",
        "  unit 1 coil 12..12 (00013..00013)                      1 bits  1 tag(s)",
        "  unit 1 holding 100..110 (40101..40111)                11 regs  3 tag(s)",
        "  unit 1 holding 300..300 (40301..40301)                 1 regs  1 tag(s)",
        "  unit 1 input 30..31 (30031..30032)                     2 regs  1 tag(s)",
        "  unit 2 holding 200..200 (40201..40201)                 1 regs  1 tag(s)",
        "other-plc: Modbus TCP 127.0.0.1:1502, poll 1s, gaps read through up to 10 registers / 100 bits",
        "  1 request(s) per poll cycle for 1 tag(s)",
        "  unit 2 holding 0..0 (40001..40001)                     1 regs  1 tag(s)",
    ]


async def test_usage_errors() -> None:
    code, text = await run("--holding", "1")
    assert code == 2 and "give --host (Modbus TCP) or --serial" in text
    code, text = await run()
    assert code == 2 and "or --config to read the configured tags" in text
    code, text = await run("--host", "h", "--holding", "1", "--coil", "2")
    assert code == 2 and "give one address" in text
    code, text = await run("--host", "h", "--address", "20001")
    assert code == 2 and "first digit" in text
    code, text = await run("--plan")
    assert code == 2 and "need --config" in text
