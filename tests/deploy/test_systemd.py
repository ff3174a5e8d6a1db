"""The deployment files: the systemd unit agrees with docs/deployment.md, and is verified by systemd."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = (ROOT / "systemd" / "prodsmart-edge.service").read_text()
DEPLOYMENT = (ROOT / "docs" / "deployment.md").read_text()


def _directives(name: str) -> list[str]:
    return re.findall(rf"^{name}=(.*)$", UNIT, flags=re.MULTILINE)


def test_unit_paths_match_the_deployment_doc() -> None:
    paths = set(re.findall(r"(/(?:opt|etc|var)/prodsmart-edge[\w./-]*)", UNIT))
    assert "/opt/prodsmart-edge/bin/prodsmart-edge" in paths
    assert "/etc/prodsmart-edge/agent.yaml" in paths
    for path in paths:
        assert path in DEPLOYMENT, f"{path} is in the unit but not in docs/deployment.md"
    # The state directory systemd creates is where the deployment doc puts the database.
    assert _directives("StateDirectory") == ["prodsmart-edge"]
    assert "/var/lib/prodsmart-edge/agent.db" in DEPLOYMENT


def test_unit_is_a_hardened_notify_service() -> None:
    assert _directives("Type") == ["notify"]
    assert _directives("Restart") == ["always"]
    assert _directives("WatchdogSec")
    assert _directives("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    for directive in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "DynamicUser"):
        assert _directives(directive), directive
    assert "char-ttyUSB rw" in _directives("DeviceAllow")
    assert _directives("SupplementaryGroups") == ["dialout"]
    for cred in _directives("LoadCredential"):
        name = cred.split(":", 1)[0]
        assert name in ("prodsmart_api_key", "prodsmart_api_secret")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify() -> None:
    result = subprocess.run(["bash", str(ROOT / "systemd" / "verify.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'VOLUME ["/var/lib/prodsmart-edge"]' in text
