"""One Modbus connection (pymodbus asyncio client), with pymodbus's errors mapped at one choke point.

Errors, all `LinkError`:

- `LinkLost`: no connection (refused, unreachable, closed by the device): reconnect.
- `NoAnswer`: the request timed out; the connection may be fine (one unit is dead).
- `Refused`: the device answered with a Modbus exception (`code`: 2 illegal address...).
- `OutOfSync`: the answer does not fit the request (late or foreign frame): resynchronise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.sources.modbus.config import BIT_TABLES, ModbusConnection
from agent.sources.modbus.planner import Block

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
RTU_DRAIN = 0.1  # seconds of silence after an RTU timeout
_FUNCTIONS = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_FRAMERS = {"tcp": FramerType.SOCKET, "rtu": FramerType.RTU, "ascii": FramerType.ASCII}


class LinkError(Exception):
    """A Modbus request or connection failed; the message is a plain sentence."""


class LinkLost(LinkError):
    pass


class NoAnswer(LinkError):
    pass


class OutOfSync(LinkError):
    pass


class Refused(LinkError):
    def __init__(self, code: int) -> None:
        self.code = code
        self.short = f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        super().__init__(f"the device refused the request: {self.short}")


def _client(config: ModbusConnection, name: str) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    # reconnect_delay=0 switches pymodbus's own reconnect off and retries=0 its retries: the
    # source alone reconnects and decides what a timeout means, so they cannot race.
    framer = _FRAMERS[config.effective_framing]
    if config.host is not None:
        return AsyncModbusTcpClient(config.host, port=config.port, framer=framer, name=name,
                                    timeout=config.timeout, retries=0, reconnect_delay=0)
    assert config.serial is not None
    return AsyncModbusSerialClient(config.serial, framer=framer, baudrate=config.baudrate,
                                   bytesize=config.bytesize, parity=config.parity,
                                   stopbits=config.stopbits, name=name, timeout=config.timeout,
                                   retries=0, reconnect_delay=0)


class Link:
    """Opens, reads blocks, closes; every pymodbus failure leaves as a `LinkError`."""

    def __init__(self, config: ModbusConnection, name: str) -> None:
        self.config = config
        self.name = name
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        # pymodbus logs every timeout and refused connect at warning/error; the source logs each
        # fault once when it starts, so the library's own lines would only repeat them.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def open(self) -> None:
        """Connect, or raise `LinkLost` with what went wrong."""
        self.close()
        client = _client(self.config, self.name)
        # A dead unit must not close the connection of the others: the source decides that.
        client.set_max_no_responses(1 << 30)
        started = time.monotonic()
        if not await client.connect():
            client.close()
            if self.config.serial is not None:
                raise LinkLost("cannot open the serial port (missing, in use, or no permission)")
            waited = time.monotonic() - started
            raise LinkLost(f"no answer to the connection request within {self.config.timeout:g}s"
                           if waited >= self.config.timeout * 0.9 else "connection refused or unreachable")
        self._client = client
        if self.config.connect_delay:
            await asyncio.sleep(self.config.connect_delay)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, block: Block, limit: float | None = None) -> Sequence[int] | Sequence[bool]:
        """The block's registers or bits; `limit` (seconds) may shorten the configured timeout."""
        client = self._client
        if client is None or not client.connected:
            raise LinkLost("the connection was closed (by the PLC or the network)")
        limit = min(limit, self.config.timeout) if limit is not None else self.config.timeout
        try:
            async with asyncio.timeout(limit):
                response = await self._request(client, block)
        except (TimeoutError, ModbusIOException):
            raise await self._no_answer(block) from None
        except ConnectionException as exc:
            raise LinkLost(f"the connection was lost ({exc})") from None
        except ModbusException as exc:
            raise OutOfSync(f"unusable answer: {exc}") from None
        return self._payload(block, response)

    async def _no_answer(self, block: Block) -> LinkError:
        if not self.connected:
            return LinkLost("the connection was lost")
        if self.config.effective_framing != "tcp":
            # RTU frames carry no transaction id: give a late answer time to arrive while no
            # request waits, so that it is dropped instead of taken for the next answer.
            await asyncio.sleep(RTU_DRAIN)
        return NoAnswer(f"unit {block.unit} did not answer within {self.config.timeout:g}s")

    @staticmethod
    async def _request(client: AsyncModbusTcpClient | AsyncModbusSerialClient, block: Block) -> ModbusPDU:
        start, count, unit = block.start, block.count, block.unit
        if block.table == "coil":
            return await client.read_coils(start, count=count, device_id=unit)
        if block.table == "discrete":
            return await client.read_discrete_inputs(start, count=count, device_id=unit)
        if block.table == "holding":
            return await client.read_holding_registers(start, count=count, device_id=unit)
        return await client.read_input_registers(start, count=count, device_id=unit)

    def _payload(self, block: Block, response: ModbusPDU) -> Sequence[int] | Sequence[bool]:
        function = _FUNCTIONS[block.table]
        if response.isError():
            if response.function_code != function | 0x80:
                raise OutOfSync(f"answer for function {response.function_code & 0x7F}, asked {function}")
            raise Refused(int(getattr(response, "exception_code", 0)))
        if response.function_code != function or (block.unit and response.dev_id != block.unit):
            raise OutOfSync(f"answer for unit {response.dev_id} function {response.function_code}, "
                            f"asked unit {block.unit} function {function}")
        data: Sequence[int] | Sequence[bool] = (
            response.bits if block.table in BIT_TABLES else response.registers
        )
        # Bits come padded to whole bytes; registers must match exactly.
        short = len(data) < block.count if block.table in BIT_TABLES else len(data) != block.count
        if short:
            raise OutOfSync(f"{len(data)} values in the answer, {block.count} asked")
        return data[: block.count]
