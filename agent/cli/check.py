"""`prodsmart-edge check CONFIG`: validate a configuration; every problem with file:line."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from agent.cli.common import load


def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config)
    for warning in cfg.warnings:
        sys.stderr.write(f"{warning}\n")
    tags = sum(len(c.tags) for c in cfg.connections.values())
    out.write(f"{args.config}: OK: {len(cfg.machines)} machines, {len(cfg.connections)} connections, "
              f"{tags} tags\n")
    return 0
