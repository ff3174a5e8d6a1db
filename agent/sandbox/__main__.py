"""`python -m agent.sandbox`: the sandbox as its own process, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from agent.sandbox.options import SandboxOptions
from agent.sandbox.server import Sandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument("--options", type=Path, help="a JSON file of SandboxOptions fields")
    parser.add_argument("--ledger-file", type=Path, help="write the ledger here as JSON on exit")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.options.read_text(encoding="utf-8")) if args.options else {}
        options = SandboxOptions.from_json(data)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"bad --options: {exc}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sandbox = Sandbox(options, args.host, args.port).start()
    try:
        print(f"SANDBOX_URL={sandbox.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
        if args.ledger_file:
            args.ledger_file.write_text(json.dumps(sandbox.ledger().to_json(), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
