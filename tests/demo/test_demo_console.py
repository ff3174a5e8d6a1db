"""`prodsmart-edge demo` prints its console's address, and the console shows the demo's machines live.

With PRODSMART_CONSOLE_PNG=path the test also writes the machine page's screenshot there (that is
how docs/console.png is made: `PRODSMART_CONSOLE_PNG=docs/console.png DEMO_SECONDS=150 pytest ...`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import artifacts, browser  # noqa: F401 - fixtures
from tests.support.harness import ROOT, wait_until


@pytest.mark.timeout(400)
def test_the_demo_prints_its_console_and_the_console_shows_it(
        tmp_path: Path, browser: WebDriver, artifacts: Path) -> None:  # noqa: F811
    seconds = float(os.environ.get("DEMO_SECONDS", "30"))
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--seconds", str(seconds + 60), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        assert demo.stdout is not None
        lines = []
        while not any(line.startswith("console: ") for line in lines):
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = re.fullmatch(r"console: (http://127\.0\.0\.1:\d+/)\n", lines[-1])
        assert url, lines[-1]
        browser.get(url.group(1))
        codes = 'return [...document.querySelectorAll("#machines tbody tr")].map(r => r.dataset.machine)'
        wait_until(lambda: browser.execute_script(codes) == ["OVEN-02", "PRESS-01"], 30,
                   message="both demo machines on the console")
        acked = 'return [...document.querySelectorAll("#machines td.acked")].map(e => e.textContent)'
        wait_until(lambda: all(v.isdigit() and int(v) > 0 for v in browser.execute_script(acked)), 60,
                   message="counts acknowledged by the sandbox")
        time.sleep(max(0.0, seconds - 20))
        browser.save_screenshot(str(artifacts / "demo-overview.png"))
        browser.get(url.group(1) + "#/m/PRESS-01")
        bars = "return document.querySelectorAll('#timeline rect.seg, #counts rect.bar-read').length"
        wait_until(lambda: browser.execute_script(bars) >= 2, 20, message="the machine page's charts")
        time.sleep(2.0)
        browser.save_screenshot(str(artifacts / "demo-machine.png"))
        if os.environ.get("PRODSMART_CONSOLE_PNG"):
            browser.save_screenshot(os.environ["PRODSMART_CONSOLE_PNG"])
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
