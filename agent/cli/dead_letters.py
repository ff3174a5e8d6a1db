"""`prodsmart-edge dead-letters CONFIG list|retry|drop`: the calls Prodsmart refused."""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from agent.cli.common import load, open_outbox


async def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config)
    outbox = await open_outbox(cfg, "reader" if args.action == "list" else "operator")
    try:
        letters = await outbox.dead_letters()
        if args.action == "list":
            if not letters:
                out.write("no dead letters\n")
            for d in letters:
                out.write(f"{d.id:>5}  {d.machine:<16} {d.endpoint:<10} HTTP {d.status}  "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d.failed_at))}\n"
                          f"       body: {d.body}\n       answer: {d.response}\n")
            return 0
        ids = args.ids or [d.id for d in letters]
        act = outbox.retry_dead_letter if args.action == "retry" else outbox.drop_dead_letter
        done = [i for i in ids if await act(i)]
        out.write(f"{args.action}: {len(done)} of {len(ids)} dead letters\n")
        return 0 if len(done) == len(ids) else 1
    finally:
        await outbox.close()
