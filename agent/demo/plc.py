"""Simulated PLCs for the demo: an OPC UA server and a Modbus TCP server fed by `SimulatedPlc`.

Run as `python -m agent.demo.plc opcua|modbus --port N [--seed S]`; each prints
`READY <port>` once it listens and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
import time

from agent.sources.simulated.config import SimulatedConnection
from agent.sources.simulated.source import SimulatedPlc

OPCUA_NAMESPACE = "urn:prodsmart-edge:demo"
UPDATE = 0.1  # seconds between value updates


def demo_plc(seed: int, unit: str) -> SimulatedPlc:
    return SimulatedPlc(SimulatedConnection(seed=seed, rate=4, cycle=40, stopped=12, scrap_every=25), unit)


async def serve_opcua(port: int, seed: int, stop: asyncio.Event) -> None:
    from asyncua import ua
    from asyncua.server.server import Server

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/demo")
    server.set_server_name("prodsmart-edge demo OPC UA PLC")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(OPCUA_NAMESPACE)
    oven = await server.nodes.objects.add_object(f"ns={ns};s=Oven", "Oven")
    nodes = {
        "count": await oven.add_variable(f"ns={ns};s=Oven.GoodParts", "GoodParts", 0,
                                         ua.VariantType.UInt32),
        "scrap": await oven.add_variable(f"ns={ns};s=Oven.Scrap", "Scrap", 0, ua.VariantType.UInt32),
        "running": await oven.add_variable(f"ns={ns};s=Oven.Running", "Running", False),
        "reason": await oven.add_variable(f"ns={ns};s=Oven.StopReason", "StopReason", 0,
                                          ua.VariantType.UInt16),
        "temperature": await oven.add_variable(f"ns={ns};s=Oven.Temperature", "Temperature", 0.0),
    }
    plc = demo_plc(seed, "oven")
    async with server:
        print(f"READY {port}", flush=True)
        while not stop.is_set():
            t = time.time()
            await nodes["count"].write_value(ua.Variant(plc.raw("count", t, 2**32), ua.VariantType.UInt32))
            await nodes["scrap"].write_value(ua.Variant(plc.raw("scrap", t, 2**32), ua.VariantType.UInt32))
            await nodes["running"].write_value(plc.running(t))
            reason = 0 if plc.running(t) else plc.reason(t)
            await nodes["reason"].write_value(ua.Variant(reason, ua.VariantType.UInt16))
            await nodes["temperature"].write_value(plc.temperature(t))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UPDATE)


def modbus_registers(plc: SimulatedPlc, t: float) -> tuple[list[int], list[bool], list[int]]:
    """Holding 0-1 count (uint32, ABCD), 2 scrap (uint16), 3 stop reason; coil 0 running;
    input 0-1 temperature (float32, ABCD)."""
    count = plc.raw("count", t, 2**32)
    running = plc.running(t)
    holding = [count >> 16, count & 0xFFFF, plc.raw("scrap", t, 2**16), 0 if running else plc.reason(t)]
    temp = struct.unpack(">HH", struct.pack(">f", plc.temperature(t)))
    return holding, [running], list(temp)


async def serve_modbus(port: int, seed: int, stop: asyncio.Event) -> None:
    from agent.demo.modbus_server import ModbusDemoServer

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    plc = demo_plc(seed, "press")
    server = ModbusDemoServer("127.0.0.1", port)
    await server.start()
    print(f"READY {port}", flush=True)
    try:
        while not stop.is_set():
            server.update(*modbus_registers(plc, time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UPDATE)
    finally:
        await server.stop()


async def _main(kind: str, port: int, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await (serve_opcua if kind == "opcua" else serve_modbus)(port, seed, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.demo.plc")
    parser.add_argument("kind", choices=["opcua", "modbus"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.kind, args.port, args.seed))
    except OSError as exc:
        sys.stderr.write(f"demo PLC: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
