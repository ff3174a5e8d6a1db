"""`prodsmart-edge run CONFIG`: the agent, as the systemd service runs it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import TextIO

from agent.cli.common import load
from agent.config.secrets import console_token, load_api_secrets, load_env_file
from agent.runtime.console.web import Console
from agent.runtime.endpoints import serve_http, supervise
from agent.runtime.logsetup import setup_logging
from agent.runtime.service import Agent, install_signal_handlers
from agent.runtime.systemd import Notifier
from agent.uplink.client import Credentials


async def command(args: argparse.Namespace, out: TextIO) -> int:
    cfg = load(args.config)
    if args.env_file:
        load_env_file(args.env_file)
    if args.dry_run:
        key, secret = "dry-run", "dry-run"
    else:
        key, secret = load_api_secrets()
    token = console_token()
    setup_logging(cfg.logging.format, cfg.logging.level, [key, secret, *([token] if token else [])])
    for warning in cfg.warnings:
        logging.getLogger("agent.config").warning("%s", warning)
    agent = Agent(cfg, Credentials(key, secret), dry_run=args.dry_run, out=out)
    notifier = Notifier()
    install_signal_handlers(agent, on_stop=lambda: notifier.notify("STOPPING=1"),
                            on_reload=lambda: notifier.notify("RELOADING=1"))
    console = Console(agent, cfg.metrics.listen, token) \
        if cfg.metrics.enabled and cfg.metrics.console else None
    server = await serve_http(agent, cfg.metrics.listen, console) if cfg.metrics.enabled else None
    agent.ready = lambda: notifier.notify("READY=1", "STATUS=running")
    tasks = [asyncio.create_task(supervise(agent, notifier))]
    if console is not None:
        tasks.append(asyncio.create_task(console.record()))
    try:
        await agent.run()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            server.close()
            await server.wait_closed()
        notifier.close()
    return 0
