"""A Modbus server (pymodbus) for tests and the benchmark, run in its own process.

    python -m tests.support.modbus_server --port 5020 \
        --spec '{"units": {"1": {"holes": {"holding": [[200, 210]]}}}}'
    python -m tests.support.modbus_server --serial /dev/pts/5 --spec ...     (Modbus RTU)
    python -m tests.support.modbus_server --pty --spec ...      (Modbus RTU on a pseudo-terminal pair)

With --pty it makes a null-modem cable of two pseudo-terminals: it serves Modbus RTU on one
and prints the other's device (`ready /dev/pts/7`) for the client to open as its serial port.

Every unit has the four tables: `registers` registers (default 1000) and `bits` bits (default
2000), valid from 0; addresses past the end or inside a hole answer "illegal data address".
Units not in the spec never answer (like a dead device behind a gateway).

It prints `ready` once it listens, then takes JSON commands on stdin, one a line, and answers
each with `ok` (or `error ...`):

    {"op": "set", "unit": 1, "table": "input", "offset": 30, "values": [16968, 0]}
    {"op": "delay", "unit": 1, "seconds": 0.5}            answers of unit 1 come that much late
    {"op": "delay", "unit": 1, "seconds": 0.5, "table": "input"}   ... only those of one table
    {"op": "garble", "unit": 1, "mode": "tid", "count": 1} next answer has a wrong transaction id
    {"op": "garble", "unit": 1, "mode": "short", "count": 1}   ... or one register too few
    {"op": "holes", "unit": 1, "holes": {"holding": [[300, 300]]}}   new program in the PLC
    {"op": "dead", "unit": 2, "dead": true}               unit 2 stops (or starts) answering
    {"op": "fail", "unit": 1, "code": 6, "count": 1}      next read answers exception 6 (busy)
    {"op": "stats"}                                        prints requests served so far
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

TABLE_OF_FUNCTION = {1: "coil", 5: "coil", 15: "coil", 2: "discrete",
                     3: "holding", 6: "holding", 16: "holding", 23: "holding", 4: "input"}


class Unit:
    def __init__(self, spec: dict[str, Any]) -> None:
        size = int(spec.get("registers", 1000))
        bits = int(spec.get("bits", 2000))
        self.tables: dict[str, list[Any]] = {
            "holding": [0] * size, "input": [0] * size, "coil": [False] * bits, "discrete": [False] * bits,
        }
        self.holes: dict[str, list[tuple[int, int]]] = {
            t: [(int(a), int(b)) for a, b in spans] for t, spans in spec.get("holes", {}).items()
        }
        self.delay: dict[str, float] = {}  # by table, "*" for all
        self.garble: tuple[str, int] | None = None
        self.dead = False
        self.fail: tuple[int, int] | None = None  # (exception code, answers left)

    def valid(self, table: str, address: int, count: int) -> bool:
        if address < 0 or address + count > len(self.tables[table]):
            return False
        return all(address + count <= lo or address > hi for lo, hi in self.holes.get(table, []))


class Store(ModbusServerContext):
    """A datastore with holes, dead units, delays; driven by the test through stdin."""

    def __init__(self, spec: dict[str, Any]) -> None:  # no super(): the base only warns and wraps
        self.units = {int(k): Unit(v or {}) for k, v in spec.get("units", {"1": {}}).items()}
        self.simdevices = []
        self.old_simulator = True  # makes the server call our async_getValues/async_setValues
        self.requests = 0

    def device_ids(self) -> list[int]:
        return list(self.units)

    def _unit(self, device_id: int) -> Unit:
        unit = self.units.get(device_id)
        if unit is None or unit.dead:
            raise NoSuchIdException(f"no unit {device_id}")
        return unit

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        unit = self._unit(device_id)
        self.requests += 1
        if unit.fail is not None:
            code, left = unit.fail
            unit.fail = (code, left - 1) if left > 1 else None
            return ExcCodes(code)
        table = TABLE_OF_FUNCTION[func_code]
        delay = unit.delay.get(table, unit.delay.get("*", 0.0))
        if delay:
            await asyncio.sleep(delay)
        if not unit.valid(table, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        return list(unit.tables[table][address : address + count])

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        unit = self._unit(device_id)
        table = TABLE_OF_FUNCTION[func_code]
        if not unit.valid(table, address, len(values)):
            return ExcCodes.ILLEGAL_ADDRESS
        unit.tables[table][address : address + len(values)] = list(values)
        return None

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        unit = self.units.get(pdu.dev_id)
        if not sending or unit is None or unit.garble is None:
            return pdu
        mode, count = unit.garble
        unit.garble = (mode, count - 1) if count > 1 else None
        if mode == "tid":
            pdu.transaction_id = (pdu.transaction_id + 1000) % 65000 + 1
        elif mode == "short" and pdu.registers:
            pdu.registers = list(pdu.registers)[:-1]
        return pdu

    def command(self, cmd: dict[str, Any]) -> str:
        op = cmd.get("op")
        if op == "stats":
            return f"ok {self.requests}"
        unit = self.units[int(cmd["unit"])]
        if op == "set":
            table, offset = cmd["table"], int(cmd["offset"])
            values = [bool(v) for v in cmd["values"]] if table in ("coil", "discrete") else cmd["values"]
            unit.tables[table][offset : offset + len(values)] = values
        elif op == "delay":
            unit.delay[str(cmd.get("table", "*"))] = float(cmd["seconds"])
        elif op == "garble":
            unit.garble = (str(cmd["mode"]), int(cmd.get("count", 1)))
        elif op == "holes":
            unit.holes = {t: [(int(a), int(b)) for a, b in spans] for t, spans in cmd["holes"].items()}
        elif op == "fail":
            unit.fail = (int(cmd["code"]), int(cmd.get("count", 1)))
        elif op == "dead":
            unit.dead = bool(cmd["dead"])
        else:
            return f"error unknown op {op!r}"
        return "ok"


async def _handle_request(self: ServerRequestHandler) -> None:
    """pymodbus 3.16's handler, answering the request it started with.

    The library's version stamps the answer with the transaction id of the *latest* request
    on the connection, so a delayed answer would carry the id of the request after it: no
    device does that, and it would make "late answer" tests test the server.
    """
    pdu, addr = self.last_pdu, self.last_addr
    if pdu is None:
        return
    try:
        response = await pdu.datastore_update(self.server.context, pdu.dev_id)
    except NoSuchIdException:
        return  # a dead unit: no answer at all
    response.transaction_id = pdu.transaction_id
    response.dev_id = pdu.dev_id
    self.server_send(response, addr)


ServerRequestHandler.handle_request = _handle_request  # type: ignore[method-assign]


def _null_modem() -> tuple[str, str]:
    """Two pseudo-terminals whose masters this process wires together: (server end, client end)."""
    loop = asyncio.get_running_loop()
    (m1, s1), (m2, s2) = os.openpty(), os.openpty()
    for master in (m1, m2):
        os.set_blocking(master, False)

    def pump(src: int, dst: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(dst, os.read(src, 4096))

    loop.add_reader(m1, pump, m1, m2)
    loop.add_reader(m2, pump, m2, m1)
    # The slave fds stay open here too, so that a client closing its end does not hang the master up.
    return os.ttyname(s1), os.ttyname(s2)


async def _commands(store: Store) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return  # the test closed our stdin: time to go
        try:
            answer = store.command(json.loads(line))
        except (KeyError, ValueError, NoSuchIdException) as exc:
            answer = f"error {exc}"
        print(answer, flush=True)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--serial", help="serve Modbus RTU on this serial device instead of TCP")
    parser.add_argument("--pty", action="store_true", help="serve RTU on a pseudo-terminal pair")
    parser.add_argument("--framer", choices=["socket", "rtu"], default="socket")
    parser.add_argument("--spec", default="{}")
    args = parser.parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    store = Store(json.loads(args.spec))
    server: ModbusTcpServer | ModbusSerialServer
    client_end = ""
    if args.pty:
        args.serial, client_end = _null_modem()
    if args.serial:
        server = ModbusSerialServer(store, port=args.serial, framer=FramerType.RTU, baudrate=115200,
                                    ignore_missing_devices=True, trace_pdu=store.trace_pdu)
    else:
        server = ModbusTcpServer(store, address=("127.0.0.1", args.port), framer=FramerType(args.framer),
                                 ignore_missing_devices=True, trace_pdu=store.trace_pdu)
    await server.serve_forever(background=True)
    print(f"ready {client_end}".strip(), flush=True)
    try:
        await _commands(store)
    finally:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
