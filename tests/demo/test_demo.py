"""`prodsmart-edge demo` runs the real agent against simulated PLCs and ends with counts in the sandbox."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.harness import ROOT


def test_demo_runs_and_counts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--seconds", "15", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    final = re.search(r"Prodsmart now holds: (.*)", result.stdout)
    assert final, result.stdout
    counts = dict(re.findall(r"(\S+) count=(\d+)", final.group(1)))
    assert set(counts) == {"PRESS-01", "OVEN-02"}, result.stdout
    assert all(int(c) > 0 for c in counts.values()), result.stdout
    assert re.search(r"-> PRESS-01\s+counter\s+count=\d+", result.stdout)
    assert re.search(r"-> OVEN-02\s+counter\s+count=\d+", result.stdout)
    log = (tmp_path / "demo.log").read_text()
    assert "Connection press-plc is up" in log and "Connection oven-plc is up" in log
    assert "stopped cleanly" in log
