"""The `prodsmart-edge` command: run, check, status, probe, rebase, dead-letters, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config
from agent.logsetup import setup_logging
from agent.secrets import MissingSecret, load_api_secrets, load_env_file

log = logging.getLogger("agent")

EXAMPLES = {
    "run": "prodsmart-edge run /etc/prodsmart-edge/agent.yaml --env-file /etc/prodsmart-edge/secrets.env",
    "check": "prodsmart-edge check config/agent.example.yaml",
    "status": "prodsmart-edge status /etc/prodsmart-edge/agent.yaml",
    "probe": "prodsmart-edge probe modbus --host 192.168.10.20 --holding 100 --count 4\n"
             "  prodsmart-edge probe opcua --url opc.tcp://192.168.10.30:4840 --browse\n"
             "  prodsmart-edge probe mqtt --config /etc/prodsmart-edge/agent.yaml --machine PACK-03",
    "rebase": "prodsmart-edge rebase /etc/prodsmart-edge/agent.yaml PRESS-01 15230",
    "dead-letters": "prodsmart-edge dead-letters /etc/prodsmart-edge/agent.yaml list",
    "demo": "prodsmart-edge demo --seconds 30",
}


class Fail(Exception):
    """An error for the technician: one plain sentence, exit code 1."""


def _parser() -> argparse.ArgumentParser:
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
    dead = cmd("dead-letters", "List, retry or drop calls Prodsmart refused.")
    dead.add_argument("config")
    dead.add_argument("action", choices=["list", "retry", "drop"])
    dead.add_argument("ids", nargs="*", type=int, help="dead letter ids (retry/drop); none = all")
    demo = cmd("demo", "Simulated PLCs + a local Prodsmart sandbox + the real agent, live.")
    demo.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    demo.add_argument("--workdir", help="where the demo keeps its files (default: a temporary folder)")
    probe = cmd("probe", "Read tags or browse a device while commissioning.")
    proto = probe.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for name in ("modbus", "opcua", "mqtt"):
        sp = proto.add_parser(name, help=f"probe a {name} device")
        sp.add_argument("--config", help="a configuration file (to read a configured machine's tags)")
        sp.add_argument("--machine", help="with --config: the machine whose tags to read")
        with contextlib.suppress(ImportError):
            _probe_module(name).add_arguments(sp)
    return p


def _probe_module(protocol: str) -> Any:
    return importlib.import_module(f"agent.sources.{protocol}.probe")


async def open_outbox(cfg: AgentConfig) -> Any:
    from agent.outbox import Outbox

    return await Outbox.open(cfg.storage.path, synchronous=cfg.storage.synchronous,
                             max_size_mb=cfg.storage.max_size_mb,
                             waste_without_count=cfg.prodsmart.waste_without_count)


def _config(path: str) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _ConfigFailed(exc) from None


class _ConfigFailed(Exception):
    def __init__(self, error: ConfigError) -> None:
        self.error = error


# --------------------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _config(args.config)
    tags = sum(len(c.tags) for c in cfg.connections.values())
    out.write(f"{args.config}: OK: {len(cfg.machines)} machines, {len(cfg.connections)} connections, "
              f"{tags} tags\n")
    return 0


async def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from agent.ops import serve_http, supervise
    from agent.service import Agent, install_signal_handlers
    from agent.systemd import Notifier
    from agent.uplink import Credentials

    cfg = _config(args.config)
    if args.env_file:
        load_env_file(args.env_file)
    if args.dry_run:
        key, secret = "dry-run", "dry-run"
    else:
        key, secret = load_api_secrets()
    redactor = setup_logging(cfg.logging.format, cfg.logging.level, [key, secret])
    del redactor
    agent = Agent(cfg, Credentials(key, secret), dry_run=args.dry_run, out=out)
    notifier = Notifier()
    install_signal_handlers(agent, on_stop=lambda: notifier.notify("STOPPING=1"),
                            on_reload=lambda: notifier.notify("RELOADING=1"))
    server = await serve_http(agent, cfg.metrics.listen) if cfg.metrics.enabled else None
    agent.ready = lambda: notifier.notify("READY=1", "STATUS=running")
    supervisor = asyncio.create_task(supervise(agent, notifier))
    try:
        await agent.run()
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        if server is not None:
            server.close()
            await server.wait_closed()
        notifier.close()
    return 0


async def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from agent.status import print_status

    return await print_status(_config(args.config), out)


async def cmd_rebase(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _config(args.config)
    if args.machine not in cfg.machines:
        raise Fail(f"no machine {args.machine!r} in {args.config}")
    outbox = await open_outbox(cfg)
    try:
        offset = await outbox.rebase(args.machine, args.count)
    finally:
        await outbox.close()
    out.write(f"{args.machine}: the next count sent will be above {args.count} (offset {offset}); "
              "it takes effect with the next count, no restart needed.\n")
    return 0


async def cmd_dead_letters(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _config(args.config)
    outbox = await open_outbox(cfg)
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


async def cmd_probe(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _config(args.config) if args.config else None
    try:
        module = _probe_module(args.protocol)
    except ImportError:
        raise Fail(f"probe is not available for {args.protocol} in this build") from None
    run: Callable[..., Awaitable[int]] = module.run
    return await run(args, cfg, out)


async def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from agent.demo import run_demo

    return await run_demo(args.seconds, args.workdir, out)


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int | Awaitable[int]]] = {
    "check": cmd_check, "run": cmd_run, "status": cmd_status, "rebase": cmd_rebase,
    "dead-letters": cmd_dead_letters, "probe": cmd_probe, "demo": cmd_demo,
}


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point; every expected failure ends as one plain message and a non-zero exit."""
    from agent.outbox import StorageError

    args = _parser().parse_args(argv)
    out = out or sys.stdout
    if args.command != "run":
        setup_logging("text", "WARNING")
    try:
        result = COMMANDS[args.command](args, out)
        return asyncio.run(result) if asyncio.iscoroutine(result) else int(result)  # type: ignore[arg-type]
    except _ConfigFailed as exc:
        problems = exc.error.problems
        sys.stderr.write("\n".join(str(p) for p in problems) + "\n")
        sys.stderr.write(f"{len(problems)} problem(s) found; nothing was started.\n")
        return 1
    except (Fail, MissingSecret, StorageError) as exc:
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
