"""The offline bundle (packaging/bundle.sh): it installs and runs on a machine with no network.

The bundle is built once per session (or taken from $PRODSMART_EDGE_BUNDLE, as CI builds it once
for this test and the image). The install runs in a network namespace of its own where root can
make one (nothing but loopback: no index, no mirror), and with no pip configuration of this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ROOT

BUNDLE_ENV = "PRODSMART_EDGE_BUNDLE"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(BUNDLE_ENV)
    if given:
        folder = Path(given)
        assert list(folder.glob("wheels/prodsmart_edge-*.whl")), f"${BUNDLE_ENV}={given} is not a bundle"
        return folder
    folder = tmp_path_factory.mktemp("bundle") / "prodsmart-edge"
    built = subprocess.run(["bash", str(ROOT / "packaging" / "bundle.sh"), str(folder)], cwd=ROOT,
                           env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return folder


def _offline(argv: list[str]) -> list[str]:
    """`argv` in a new network namespace (loopback only) when this user may make one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0:
        return [unshare, "--net", *argv]
    return argv


def _install(bundle: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHON"] = sys.executable
    argv = ["bash", str(bundle / "install.sh"), "--prefix", str(prefix), "--venv-only"]
    return subprocess.run(_offline(argv), env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def installed(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    prefix = tmp_path_factory.mktemp("opt") / "prodsmart-edge"
    done = _install(bundle, prefix)
    assert done.returncode == 0, done.stdout + done.stderr
    yield prefix


def test_the_bundle_holds_what_a_line_pc_needs(bundle: Path) -> None:
    for name, source in (("prodsmart-edge.service", "systemd/prodsmart-edge.service"),
                         ("agent.example.yaml", "config/agent.example.yaml"), ("Dockerfile", "Dockerfile")):
        assert (bundle / name).read_bytes() == (ROOT / source).read_bytes(), name
    assert os.access(bundle / "install.sh", os.X_OK)
    wheels = [p.name for p in (bundle / "wheels").iterdir()]
    assert all(name.endswith(".whl") for name in wheels), "only wheels: nothing to build on the line PC"


def test_it_installs_offline_and_checks_the_example(installed: Path, bundle: Path) -> None:
    # Every dependency came from the bundle, and all of them are consistent.
    pip_check = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "check"],
                               capture_output=True, text=True, timeout=120)
    assert pip_check.returncode == 0, pip_check.stdout + pip_check.stderr
    example = bundle / "agent.example.yaml"
    check = subprocess.run([str(installed / "bin" / "prodsmart-edge"), "check", str(example)],
                           capture_output=True, text=True, timeout=120, cwd=installed)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip().endswith("OK: 5 machines, 4 connections, 20 tags")
    # The installed agent is this checkout's (not one found elsewhere on the machine).
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import agent; print(agent.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=installed)
    assert where.stdout.startswith(str(installed)), where.stdout


def test_a_failed_upgrade_keeps_the_installed_version(installed: Path, bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    for wheel in broken.glob("wheels/pydantic_core-*.whl"):
        wheel.unlink()
    done = _install(broken, installed)
    assert done.returncode != 0
    assert "the previous version is kept" in done.stderr
    version = subprocess.run([str(installed / "bin" / "prodsmart-edge"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("prodsmart-edge "), version
