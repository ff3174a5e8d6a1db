"""`prodsmart-edge probe modbus`: read raw registers or configured tags while commissioning.

Three uses:
- an address (`--holding 100 --count 4`): the raw registers, and their value decoded as every
  type in every word/byte order side by side (a wrong order is the most common mistake);
- a configuration (`--config`, optionally `--machine` or `--connection`): every tag read once,
  raw and decoded;
- `--plan`: the read requests each poll cycle makes for the tag map, without connecting.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import ValidationError

from agent.config.specs import AgentConfig, ConnectionSpec
from agent.probe.common import Usage, print_table, roles_of
from agent.sources.modbus.config import BIT_TABLES, TABLES, ModbusConnection, Table, modicon, parse_modicon
from agent.sources.modbus.decode import NUMERIC_TYPES, ORDERS, decode, registers_of
from agent.sources.modbus.link import Link, LinkError
from agent.sources.modbus.planner import Block, Limits, Point, describe_plan, plan, point_of
from agent.sources.modbus.poller import Poller

_ORDER_NOTES = {"ABCD": "ABCD big-endian", "CDAB": "CDAB word_order: little", "BADC": "BADC bytes swapped",
                "DCBA": "DCBA little-endian"}
_DEVICE_ARGS = ("host", "port", "serial", "baudrate", "parity", "stopbits", "framing", "unit", "timeout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    device = parser.add_argument_group("device (instead of, or overriding, a configured connection)")
    device.add_argument("--connection", help="with --config: the Modbus connection to use")
    device.add_argument("--host", help="Modbus TCP device or gateway")
    device.add_argument("--port", type=int, help="TCP port (default 502)")
    device.add_argument("--serial", help="serial port for Modbus RTU, e.g. /dev/ttyUSB0")
    device.add_argument("--baudrate", type=int)
    device.add_argument("--parity", help="none, even or odd")
    device.add_argument("--stopbits", type=int, choices=[1, 2])
    device.add_argument("--framing", choices=["tcp", "rtu", "ascii"])
    device.add_argument("--unit", type=int, help="unit (slave) id")
    device.add_argument("--timeout", help="answer timeout, e.g. 1s")
    where = parser.add_argument_group("what to read")
    for table in TABLES:
        where.add_argument(f"--{table}", type=int, metavar="OFFSET", help=f"zero-based {table} offset")
    where.add_argument("--address", help="Modicon address instead, e.g. 40101 or 00013")
    where.add_argument("--count", type=int, help="registers (default 4) or bits (default 16) to read")
    parser.add_argument("--plan", action="store_true", help="print the read requests per poll cycle")


async def run(args: argparse.Namespace, config: AgentConfig | None, out: TextIO) -> int:
    try:
        if getattr(args, "plan", False):
            return _print_plans(_connections(args, config), out)
        target = _target(args)
        if target is not None:
            return await _read_address(_device(args, config), target, args.count, out)
        if config is None:
            raise Usage("give an address (--holding 100, --address 40101 ...) with --host or --serial, "
                         "or --config to read the configured tags")
        return await _read_tags(_connections(args, config), config, getattr(args, "machine", None), out)
    except Usage as exc:
        print(f"probe modbus: {exc}", file=out)
        return 2



# ------------------------------------------------------------------------------ choosing


def _modbus(config: AgentConfig) -> dict[str, ConnectionSpec]:
    return {n: c for n, c in config.connections.items() if c.protocol == "modbus"}


def _connections(args: argparse.Namespace, config: AgentConfig | None) -> list[ConnectionSpec]:
    if config is None:
        raise Usage("--plan and reading configured tags need --config")
    conns = _modbus(config)
    machine = getattr(args, "machine", None)
    name = args.connection
    if machine is not None:
        if machine not in config.machines:
            raise Usage(f"no machine {machine!r} in {config.path}")
        name = config.machines[machine].connection
    if name is not None:
        if name not in conns:
            raise Usage(f"{name!r} is not a Modbus connection of {config.path}")
        return [conns[name]]
    if not conns:
        raise Usage(f"{config.path} has no Modbus connection")
    return list(conns.values())


def _target(args: argparse.Namespace) -> tuple[Table, int] | None:
    given = [(t, getattr(args, t)) for t in TABLES if getattr(args, t, None) is not None]
    if args.address is not None:
        try:
            given.append(parse_modicon(args.address))
        except ValueError as exc:
            raise Usage(str(exc)) from None
    if len(given) > 1:
        raise Usage("give one address: --holding, --input, --coil, --discrete or --address")
    return given[0] if given else None


def _device(args: argparse.Namespace, config: AgentConfig | None) -> ModbusConnection:
    """The connection settings: a configured connection's, overridden by the command line."""
    settings: dict[str, Any] = {}
    if args.host is None and args.serial is None:
        if config is None:
            raise Usage("give --host (Modbus TCP) or --serial (Modbus RTU), or --config and --connection")
        spec = _connections(args, config)[0]
        assert isinstance(spec.config, ModbusConnection)
        settings = spec.config.model_dump(exclude_unset=True)
    settings.update({k: getattr(args, k) for k in _DEVICE_ARGS if getattr(args, k, None) is not None})
    try:
        return ModbusConnection.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'device'}: {e['msg']}" for e in exc.errors())
        raise Usage(problems) from None


# ------------------------------------------------------------------------------ plan


def _print_plans(conns: list[ConnectionSpec], out: TextIO) -> int:
    for spec in conns:
        assert isinstance(spec.config, ModbusConnection)
        cfg = spec.config
        blocks = plan([point_of(t, cfg.unit) for t in spec.tags.values()], Limits.of(cfg))
        print(f"{spec.name}: Modbus {_kind(cfg)} {cfg.endpoint}, poll {cfg.poll:g}s, "
              f"gaps read through up to {cfg.max_gap} registers / {cfg.max_gap_bits} bits", file=out)
        print(f"  {len(blocks)} request(s) per poll cycle for {len(spec.tags)} tag(s)", file=out)
        for line in describe_plan(blocks):
            print("  " + line, file=out)
    return 0


def _kind(cfg: ModbusConnection) -> str:
    framing = cfg.effective_framing.upper()
    return ("TCP" if framing == "TCP" else f"{framing} over TCP") if cfg.host else framing


# ------------------------------------------------------------------------------ one address


async def _read_address(device: ModbusConnection, target: tuple[Table, int], count: int | None,
                        out: TextIO) -> int:
    table, offset = target
    bits = table in BIT_TABLES
    count = count or (16 if bits else 4)
    if count < 1 or offset + count > 65536:
        raise Usage("--count must be at least 1 and stay below address 65536")
    block = Block(device.unit, table, offset, count, ())
    link = Link(device, "probe")
    try:
        await link.open()
        data = await link.read(block)
    except LinkError as exc:
        print(f"Cannot read {block.describe()} at {device.endpoint}: {exc}", file=out)
        return 1
    finally:
        link.close()
    print(f"Modbus {_kind(device)} {device.endpoint}, {block.describe()}", file=out)
    if bits:
        _print_bits(table, offset, [bool(b) for b in data], out)
    else:
        registers = [int(r) for r in data]
        _print_registers(table, offset, registers, out)
        print(f"\nDecoded from {table} {offset} ({modicon(table, offset)}):", file=out)
        print_table(_decodings(registers), out)
    return 0


def _print_bits(table: Table, offset: int, values: Sequence[bool], out: TextIO) -> None:
    rows = [[str(offset + i), modicon(table, offset + i), "1" if v else "0"] for i, v in enumerate(values)]
    print_table([["offset", "modicon", "value"], *rows], out)


def _print_registers(table: Table, offset: int, registers: Sequence[int], out: TextIO) -> None:
    rows = [["offset", "modicon", "hex", "uint16", "int16", "bits 15..0"]]
    for i, r in enumerate(registers):
        rows.append([str(offset + i), modicon(table, offset + i), f"0x{r:04X}", str(r),
                     str(decode([r], "int16")), f"{r >> 8:08b} {r & 0xFF:08b}"])
    print_table(rows, out)


def _decodings(registers: Sequence[int]) -> list[list[str]]:
    rows = [["type", *(_ORDER_NOTES[o] for o in ORDERS)]]
    for type_name in NUMERIC_TYPES:
        width = registers_of(type_name)
        if width > len(registers):
            rows.append([type_name, *([f"(needs {width} registers)"] + [""] * (len(ORDERS) - 1))])
            continue
        rows.append([type_name, *(_fmt(decode(registers[:width], type_name, o)) for o in ORDERS)])
    return rows


def _fmt(value: int | float | bool | None) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------ configured tags


async def _read_tags(conns: list[ConnectionSpec], config: AgentConfig, machine: str | None,
                     out: TextIO) -> int:
    failed = 0
    for spec in conns:
        cfg = spec.config
        assert isinstance(cfg, ModbusConnection)
        roles = roles_of(config, spec.name)
        points = [point_of(t, cfg.unit) for k, t in spec.tags.items()
                  if machine is None or any(r.startswith(machine + " ") for r in roles.get(k, []))]
        print(f"{spec.name}: Modbus {_kind(cfg)} {cfg.endpoint}", file=out)
        link = Link(cfg, spec.name)
        try:
            await link.open()
            results = await Poller(link, points, Limits.of(cfg), spec.name).cycle()
        except LinkError as exc:
            print(f"  Cannot read the PLC at {cfg.endpoint}: {exc}", file=out)
            failed += 1
            continue
        finally:
            link.close()
        rows = [["role", "address", "type", "order", "raw", "value"]]
        for r in sorted(results, key=lambda r: (r.point.unit, r.point.table, r.point.offset)):
            value = _fmt(r.value) if r.error is None else f"BAD: {r.error}"
            rows.append([", ".join(roles.get(r.point.key, ["-"])), r.point.describe(), _type(r.point),
                         _order(r.point), _raw(r.raw), value])
            failed += r.error is not None
        print_table(rows, out)
    return 1 if failed else 0


def _type(point: Point) -> str:
    return f"bool (bit {point.codec.bit})" if point.codec.bit is not None else point.codec.type


def _order(point: Point) -> str:
    multi = point.codec.width > 1 and point.table not in BIT_TABLES
    return point.codec.order if multi or point.codec.order != "ABCD" else "-"


def _raw(raw: Sequence[int | bool] | None) -> str:
    if raw is None:
        return "-"
    if raw and isinstance(raw[0], bool):
        return " ".join("1" if b else "0" for b in raw)
    return " ".join(f"0x{int(r):04X}" for r in raw)
