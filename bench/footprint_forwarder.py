"""The footprint bench's bare forwarder: the same libraries as the agent, no logic, no outbox.

    python bench/footprint_forwarder.py PLAN.json

PLAN: {"sink": URL, "modbus": [[host, port, unit], ...], "opcua": [[url, [nodeid, ...]], ...],
"mqtt": [host, port, [topic, ...]], "poll": 0.1, "sampling": 0.1}. It polls each Modbus PLC
(pymodbus, holding registers 0-3), subscribes to each OPC UA server's nodes (asyncua), subscribes
to the MQTT topics (paho-mqtt, QoS 1) and POSTs everything it read as one JSON batch a second
(httpx). What it would take to move the values, and nothing of what makes them count right.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

import httpx
import paho.mqtt.client as paho
from asyncua import Client, ua
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

Batch = list[list[Any]]


async def poll_modbus(host: str, port: int, unit: int, period: float, out: Batch) -> None:
    client = AsyncModbusTcpClient(host, port=port)
    await client.connect()
    name = f"{host}:{port}/{unit}"
    next_at = time.monotonic()
    while True:
        answer = await client.read_holding_registers(0, count=4, device_id=unit)
        now = time.time()
        if not answer.isError():
            r = answer.registers
            out.extend(([name, "count", (r[0] << 16) | r[1], now], [name, "running", r[2], now],
                        [name, "temp", r[3] / 10, now]))
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class _Changes:
    def __init__(self, name: str, out: Batch) -> None:
        self.name = name
        self.out = out

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.out.append([self.name, node.nodeid.to_string(), value, time.time()])


async def subscribe_opcua(url: str, nodes: list[str], sampling: float, out: Batch) -> None:
    async with Client(url) as client:
        sub = await client.create_subscription(sampling * 1000, _Changes(url, out))
        await sub.subscribe_data_change([client.get_node(ua.NodeId.from_string(n)) for n in nodes],
                                        sampling_interval=sampling * 1000)
        await asyncio.Event().wait()


def subscribe_mqtt(host: str, port: int, topics: list[str], out: Batch,
                   loop: asyncio.AbstractEventLoop) -> paho.Client:
    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        data = json.loads(msg.payload)
        rows = [[msg.topic, k, v, now] for k, v in data.items()]
        loop.call_soon_threadsafe(out.extend, rows)

    def on_connect(client: paho.Client, *_: Any) -> None:
        client.subscribe([(t, 1) for t in topics])

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-forwarder", clean_session=True)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    return client


async def post_every_second(sink: str, out: Batch) -> None:
    async with httpx.AsyncClient() as http:
        while True:
            await asyncio.sleep(1.0)
            batch = out[:]
            del out[:]
            if batch:
                await http.post(sink, json=batch)


async def main(plan: dict[str, Any]) -> None:
    out: Batch = []
    loop = asyncio.get_running_loop()
    host, port, topics = plan["mqtt"]
    mqtt = subscribe_mqtt(host, port, topics, out, loop)
    try:
        async with asyncio.TaskGroup() as group:
            for h, p, unit in plan["modbus"]:
                group.create_task(poll_modbus(h, p, unit, plan["poll"], out))
            for url, nodes in plan["opcua"]:
                group.create_task(subscribe_opcua(url, nodes, plan["sampling"], out))
            group.create_task(post_every_second(plan["sink"], out))
    finally:
        mqtt.loop_stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    with open(sys.argv[1], encoding="utf-8") as f:
        asyncio.run(main(json.load(f)))
