"""`prodsmart-edge rebase CONFIG MACHINE COUNT`: continue a machine's count above Prodsmart's."""

from __future__ import annotations

import argparse
from typing import TextIO

from agent.cli.common import CommandError, load, open_outbox


async def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config)
    if args.machine not in cfg.machines:
        raise CommandError(f"no machine {args.machine!r} in {args.config}")
    outbox = await open_outbox(cfg, "operator")
    try:
        offset = await outbox.rebase(args.machine, args.count)
    finally:
        await outbox.close()
    out.write(f"{args.machine}: the next count sent will be above {args.count} (offset {offset}); "
              "it takes effect with the next count, no restart needed.\n")
    return 0
