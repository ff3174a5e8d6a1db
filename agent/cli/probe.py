"""`prodsmart-edge probe modbus|opcua|mqtt`: read, browse or watch a device while commissioning."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from agent.cli.common import CommandError, load

PROTOCOLS = ("modbus", "opcua", "mqtt")  # each has a module in agent.probe


def probe_module(protocol: str) -> Any:
    """The probe of one protocol; imported only when that protocol is probed (it loads its library)."""
    return importlib.import_module(f"agent.probe.{protocol}")


async def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config) if args.config else None
    try:
        module = probe_module(args.protocol)
    except ImportError:
        raise CommandError(f"probe is not available for {args.protocol} in this build") from None
    run: Callable[..., Awaitable[int]] = module.run
    return await run(args, cfg, out)
