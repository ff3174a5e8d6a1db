"""`prodsmart-edge rebase CONFIG MACHINE COUNT`: continue a machine's count above Prodsmart's."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TextIO

from agent.cli.common import CommandError, load, open_outbox


def _waste(args: argparse.Namespace, codes: Iterable[str]) -> dict[str, int]:
    waste: dict[str, int] = {}
    for item in args.waste:
        code, sep, quantity = str(item).partition("=")
        if not sep or not quantity.strip().isdigit():
            raise CommandError(f"--waste takes CODE=QUANTITY (e.g. Scrap=120), not {item!r}")
        if code not in codes:
            raise CommandError(f"machine {args.machine} has no waste code {code!r} in {args.config}")
        waste[code] = int(quantity)
    return waste


async def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config)
    if args.machine not in cfg.machines:
        raise CommandError(f"no machine {args.machine!r} in {args.config}")
    if args.count < 0:
        raise CommandError("the count must be 0 or more")
    waste = _waste(args, cfg.machines[args.machine].waste)
    # Serialised with a running agent by SQLite; it never touches the agent's calls in flight.
    outbox = await open_outbox(cfg, "operator")
    try:
        offset = await outbox.rebase(args.machine, args.count, waste)
    finally:
        await outbox.close()
    also = "".join(f", {code} above {q}" for code, q in sorted(waste.items()))
    out.write(f"{args.machine}: the next count sent will be above {args.count}{also} (offset {offset}); "
              "parts counted but not yet acknowledged by Prodsmart go out on top of it. It takes "
              "effect with the next count, no restart needed.\n")
    return 0
