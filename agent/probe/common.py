"""What the probes share: a usage error, a plain-text table, the roles a configured tag plays."""

from __future__ import annotations

from typing import TextIO

from agent.config.specs import AgentConfig, tag_roles


class Usage(Exception):
    """The command line does not say what to read, or from where: the probe prints it, exit 2."""


def print_table(rows: list[list[str]], out: TextIO) -> None:
    """Rows as left-aligned columns; the first row is the heading."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def roles_of(config: AgentConfig | None, connection: str) -> dict[str, list[str]]:
    """Tag key -> the machine roles it plays, e.g. "PRESS-01 counter"."""
    return tag_roles(config.machines.values(), connection) if config else {}
