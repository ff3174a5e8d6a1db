"""The footprint bench's plant, in its own process: simulated Modbus PLCs, OPC UA PLCs or MQTT publishers.

    python bench/footprint_plant.py modbus --port P --machines 10
    python bench/footprint_plant.py opcua --port P --machines 10
    python bench/footprint_plant.py mqtt --port P --machines 10      (publishers to a broker on P)

Every machine has three values, changed 10 times a second: a counter (+1 per tick while it runs;
held at 0 until `go`), a run state (stops 2 s of every 5 min) and a temperature. Modbus: unit i
(1-based) holds them in holding registers 0-1 (uint32), 2 and 3 (temperature x 10). OPC UA:
`ns=<ns>;s=M<i>.Counter|Running|Temperature`. MQTT: topic `bench/m<i>` with the JSON payload
`{"count": n, "running": true, "temp": 181.5}` (QoS 1, one message per tick).

Prints `ready` (OPC UA: `ready <ns>`), then reads commands on stdin: `go` (counters start),
`freeze` (no value changes any more; MQTT goes on publishing them) answered with `counts {json}`, the final
counter of each machine, and `published` answered with `published <messages>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TICK = 0.1


class Plant:
    """The values of every machine, advanced once per tick."""

    def __init__(self, machines: int) -> None:
        self.machines = machines
        self.counts = [0] * machines
        self.counting = False
        self.frozen = False
        self.ticks = 0
        self.published = 0

    def advance(self) -> None:
        if self.frozen:
            return
        self.ticks += 1
        if self.counting:
            for i in range(self.machines):
                if self.running(i):
                    self.counts[i] += 1

    def running(self, i: int) -> bool:
        return (self.ticks + 293 * i) % 3000 >= 20

    def temperature(self, i: int) -> float:
        return 180.0 + ((self.ticks + i) % 40) * 0.1

    def command(self, line: str) -> str:
        word = line.strip()
        if word == "go":
            self.counting = True
            return "ok"
        if word == "freeze":
            self.frozen = True
            return "counts " + json.dumps({f"M{i + 1}": c for i, c in enumerate(self.counts)})
        if word == "published":
            return f"published {self.published}"
        return f"error unknown command {word!r}"


async def _ticking(plant: Plant, write: Any) -> None:
    next_at = time.monotonic()
    while True:
        plant.advance()
        await write()
        next_at += TICK
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _commands(plant: Plant) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        print(plant.command(line), flush=True)


async def modbus(plant: Plant, port: int) -> None:
    from pymodbus.server import ModbusTcpServer

    from tests.support.modbus_server import Store

    units = {str(i + 1): {"registers": 16, "bits": 16} for i in range(plant.machines)}
    store = Store({"units": units})
    server = ModbusTcpServer(store, address=("127.0.0.1", port), ignore_missing_devices=True)

    async def write() -> None:
        for i in range(plant.machines):
            c = plant.counts[i]
            store.units[i + 1].tables["holding"][0:4] = [
                c >> 16, c & 0xFFFF, int(plant.running(i)), int(plant.temperature(i) * 10)]

    await server.serve_forever(background=True)
    print("ready", flush=True)
    ticker = asyncio.create_task(_ticking(plant, write))
    await _commands(plant)
    ticker.cancel()
    await server.shutdown()


async def opcua(plant: Plant, port: int) -> None:
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:prodsmart-edge:bench")
    kinds = {"Counter": ua.VariantType.UInt32, "Running": ua.VariantType.Boolean,
             "Temperature": ua.VariantType.Double}
    nodes: list[dict[str, ua.NodeId]] = []
    for i in range(plant.machines):
        name = f"M{i + 1}"
        obj = await server.nodes.objects.add_object(ua.NodeId(name, ns), ua.QualifiedName(name, ns))
        made = {}
        for var, vtype in kinds.items():
            initial = {"Counter": 0, "Running": False, "Temperature": 0.0}[var]
            node = await obj.add_variable(ua.NodeId(f"{name}.{var}", ns), ua.QualifiedName(var, ns),
                                          ua.Variant(initial, vtype))
            made[var] = node.nodeid
        nodes.append(made)

    async def write() -> None:
        for i, made in enumerate(nodes):
            values = {"Counter": plant.counts[i], "Running": plant.running(i),
                      "Temperature": plant.temperature(i)}
            for var, nodeid in made.items():
                dv = ua.DataValue(ua.Variant(values[var], kinds[var]))
                await server.write_attribute_value(nodeid, dv)

    async with server:
        print(f"ready {ns}", flush=True)
        ticker = asyncio.create_task(_ticking(plant, write))
        await _commands(plant)
        ticker.cancel()


async def mqtt(plant: Plant, port: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    clients = []
    for i in range(plant.machines):
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{i + 1}")
        client.connect("127.0.0.1", port)
        client.loop_start()  # the publishers are another machine: threads are fine here
        clients.append(client)

    async def write() -> None:
        for i, client in enumerate(clients):
            payload = json.dumps({"count": plant.counts[i], "running": plant.running(i),
                                  "temp": round(plant.temperature(i), 1)})
            client.publish(f"bench/m{i + 1}", payload, qos=1)
            plant.published += 1

    print("ready", flush=True)
    ticker = asyncio.create_task(_ticking(plant, write))
    await _commands(plant)
    ticker.cancel()
    for client in clients:
        client.loop_stop()
        client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["modbus", "opcua", "mqtt"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--machines", type=int, default=10)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    plant = Plant(args.machines)
    asyncio.run({"modbus": modbus, "opcua": opcua, "mqtt": mqtt}[args.kind](plant, args.port))


if __name__ == "__main__":
    main()
