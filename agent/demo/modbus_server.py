"""A minimal Modbus TCP server (pymodbus) holding the demo PLC's registers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding", 16: "holding",
          23: "holding", 4: "input"}
SIZE = 100


class _Store(ModbusServerContext):
    """One unit, four tables of SIZE entries; the demo writes them, clients read them."""

    def __init__(self) -> None:  # no super(): the base only warns about its deprecated store
        self.tables: dict[str, list[Any]] = {
            "holding": [0] * SIZE, "input": [0] * SIZE, "coil": [False] * SIZE, "discrete": [False] * SIZE}
        self.simdevices = []
        self.old_simulator = True  # pymodbus then calls async_getValues/async_setValues

    def device_ids(self) -> list[int]:
        return [1]

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        table = self.tables[_TABLE[func_code]]
        if address < 0 or address + count > len(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return list(table[address:address + count])

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION  # a read-only PLC for the demo


class ModbusDemoServer:
    def __init__(self, host: str, port: int) -> None:
        self.store = _Store()
        self.server = ModbusTcpServer(self.store, address=(host, port), framer=FramerType.SOCKET)

    async def start(self) -> None:
        await self.server.serve_forever(background=True)

    def update(self, holding: list[int], coils: list[bool], inputs: list[int]) -> None:
        self.store.tables["holding"][: len(holding)] = holding
        self.store.tables["coil"][: len(coils)] = coils
        self.store.tables["input"][: len(inputs)] = inputs

    async def stop(self) -> None:
        await self.server.shutdown()  # type: ignore[no-untyped-call]
