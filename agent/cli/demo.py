"""`prodsmart-edge demo`: simulated PLCs, a local Prodsmart sandbox and the real agent, live."""

from __future__ import annotations

import argparse
from typing import TextIO

from agent.demo.runner import run_demo


async def command(args: argparse.Namespace, out: TextIO) -> int:
    return await run_demo(args.seconds, args.workdir, out)
