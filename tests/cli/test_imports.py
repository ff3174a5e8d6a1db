"""The command line loads a protocol library only where a command or a configured connection needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_LIBRARIES = {"asyncua", "pymodbus", "paho", "serial"}


def _loaded(code: str, *args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))", *args],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()} & PROTOCOL_LIBRARIES


def test_help_and_check_load_no_protocol_library() -> None:
    help_code = "from agent.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded(help_code) == set()
    check = "from agent.cli.main import main\nmain(['check', 'config/agent.example.yaml'])"
    assert _loaded(check) == set()


def test_an_mqtt_only_agent_never_loads_the_opc_ua_or_modbus_libraries() -> None:
    code = ("import sys\nimport agent.cli.run\nfrom agent.cli.common import load\n"
            "from agent.sources.registry import PROTOCOLS\n"
            "cfg = load(sys.argv[1])\n"
            "[PROTOCOLS[c.protocol].load_source() for c in cfg.connections.values()]")
    assert _loaded(code, "tests/cli/mqtt-only.yaml") == {"paho"}


def test_a_probe_loads_only_its_own_library() -> None:
    code = ("from agent.cli.main import _parser\n"
            "_parser(['probe', 'modbus', '--help']).parse_known_args(['probe', 'modbus'])")
    libs = _loaded(code)
    assert "pymodbus" in libs and not libs & {"asyncua", "paho"}
