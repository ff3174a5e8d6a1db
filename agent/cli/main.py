"""The `prodsmart-edge` command: the parser and the dispatch to one module per command.

Only the parser lives here, so `--help` answers at once: each command's module (and the protocol
libraries it needs) is imported when that command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from agent import __version__
from agent.cli.common import ConfigFailed
from agent.cli.probe import PROTOCOLS, probe_module
from agent.core.errors import PlainError

EXAMPLES = {
    "run": "prodsmart-edge run /etc/prodsmart-edge/agent.yaml --env-file /etc/prodsmart-edge/secrets.env",
    "check": "prodsmart-edge check config/agent.example.yaml",
    "status": "prodsmart-edge status /etc/prodsmart-edge/agent.yaml",
    "probe": "prodsmart-edge probe modbus --host 192.168.10.20 --holding 100 --count 4\n"
             "  prodsmart-edge probe opcua --url opc.tcp://192.168.10.30:4840 --browse\n"
             "  prodsmart-edge probe mqtt --config /etc/prodsmart-edge/agent.yaml --machine PACK-03",
    "rebase": "prodsmart-edge rebase /etc/prodsmart-edge/agent.yaml PRESS-01 15230 --waste Scrap=120",
    "dead-letters": "prodsmart-edge dead-letters /etc/prodsmart-edge/agent.yaml list",
    "demo": "prodsmart-edge demo --seconds 30",
}

# command -> the module under agent.cli whose `command(args, out)` runs it
MODULES = {"check": "check", "run": "run", "status": "status", "rebase": "rebase",
           "dead-letters": "dead_letters", "probe": "probe", "demo": "demo"}


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; a probe's own options are added only for the protocol `argv` names."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="prodsmart-edge",
                                description="Shop-floor machine edge agent for Prodsmart.")
    p.add_argument("--version", action="version", version=f"prodsmart-edge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext,
                              epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    run = cmd("run", "Run the agent (as the systemd service does).")
    run.add_argument("config")
    run.add_argument("--env-file", help="file with PRODSMART_API_KEY=... / PRODSMART_API_SECRET=...")
    run.add_argument("--dry-run", action="store_true", help="print the calls instead of sending them")
    cmd("check", "Validate a configuration file; print every problem with file:line.").add_argument("config")
    cmd("status", "Queues, last values sent and dead letters, from the database.").add_argument("config")
    rebase = cmd("rebase", "Continue a machine's counter above what Prodsmart already has.")
    rebase.add_argument("config")
    rebase.add_argument("machine")
    rebase.add_argument("count", type=int, help="the machine's current counter in Prodsmart")
    rebase.add_argument("--waste", action="append", default=[], metavar="CODE=QUANTITY",
                        help="also a waste code's current quantity in Prodsmart (repeatable)")
    dead = cmd("dead-letters", "List, retry or drop calls Prodsmart refused.")
    dead.add_argument("config")
    dead.add_argument("action", choices=["list", "retry", "drop"])
    dead.add_argument("ids", nargs="*", type=int, help="dead letter ids (retry/drop); none = all")
    demo = cmd("demo", "Simulated PLCs + a local Prodsmart sandbox + the real agent, live.")
    demo.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    demo.add_argument("--workdir", help="where the demo keeps its files (default: a temporary folder)")
    probe = cmd("probe", "Read tags or browse a device while commissioning.")
    proto = probe.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    probing = "probe" in argv
    for name in PROTOCOLS:
        sp = proto.add_parser(name, help=f"probe a {name} device")
        sp.add_argument("--config", help="a configuration file (to read a configured machine's tags)")
        sp.add_argument("--machine", help="with --config: the machine whose tags to read")
        if probing and name in argv:
            try:
                probe_module(name).add_arguments(sp)
            except ImportError:
                pass
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point; every expected failure ends as one plain message and a non-zero exit."""
    args = _parser(argv).parse_args(argv)
    out = out or sys.stdout
    try:
        if args.command != "run":
            from agent.runtime.logsetup import setup_logging

            setup_logging("text", "WARNING")
        module = importlib.import_module(f"agent.cli.{MODULES[args.command]}")
        command: Callable[[argparse.Namespace, TextIO], int | Awaitable[int]] = module.command
        result = command(args, out)
        return asyncio.run(result) if asyncio.iscoroutine(result) else int(result)  # type: ignore[arg-type]
    except ConfigFailed as exc:
        problems = exc.error.problems
        sys.stderr.write("\n".join(str(p) for p in problems) + "\n")
        sys.stderr.write(f"{len(problems)} problem(s) found; nothing was started.\n")
        return 1
    except PlainError as exc:
        sys.stderr.write(f"prodsmart-edge: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(f"prodsmart-edge: internal error: {type(exc).__name__}: {exc}\n"
                         "Run again with --debug for the details, and report it.\n")
        return 70
