"""The browser console of a running agent, in Debian's Chromium: live machines, charts, XSS, the token.

The agent runs as its own process against the Prodsmart sandbox (simulated PLCs, or a real
Mosquitto for the MQTT payload), and is SIGKILLed mid-production once: the open page must say
so and come back by itself. The page is loaded in headless Chromium through selenium.
Screenshots are saved to $PRODSMART_TEST_ARTIFACTS (or the test's tmp_path).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.sandbox import SandboxOptions
from tests.conftest import free_port
from tests.support.browser import artifacts, browser  # noqa: F401 - fixtures
from tests.support.fixtures_mqtt import Mosquitto, Publisher
from tests.support.fixtures_mqtt import mosquitto as mosquitto
from tests.support.harness import (
    AGENT_PROLOGUE,
    AgentProcess,
    agent_env,
    start_sandbox,
    wait_until,
    write_config,
)

SIMULATED = AGENT_PROLOGUE + """
connections:
  sim:
    simulated: {{seed: 3, poll: 100ms, rate: 25, cycle: 6s, stopped: 2s, start_at: {start}, stop_at: {stop}}}
machines:
{machines}
"""
MACHINE = """  {code}:
    connection: sim
    counter: {{signal: count, unit: "{unit}"}}
    running: {{signal: running, unit: "{unit}"}}
    stop_reason:
      tag: {{signal: reason, unit: "{unit}"}}
      types: {{1: Maintenance, 2: Material shortage}}
"""
CODES = ("PRESS-01", "OVEN-02", "PACK-03")


def _updates(driver: WebDriver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.updates || 0)"))


def _cells(driver: WebDriver, css: str) -> dict[str, str]:
    """Per machine row of the overview: the text of the cell matching `css` (read in one go: the
    page redraws its tables on every update)."""
    script = ("return Object.fromEntries([...document.querySelectorAll('#machines tbody tr')]"
              ".map(r => [r.dataset.machine, r.querySelector(arguments[0]).textContent]))")
    return dict(driver.execute_script(script, css))


def _texts(driver: WebDriver, css: str) -> list[str]:
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    return list(driver.execute_script(script, css))


def _rows(driver: WebDriver, css: str) -> list[list[str]]:
    script = ("return [...document.querySelectorAll(arguments[0])]"
              ".map(r => [...r.querySelectorAll('td')].map(td => td.textContent))")
    return list(driver.execute_script(script, css))


def _drawn(driver: WebDriver, css: str) -> int:
    """How many SVG shapes matching `css` have a visible size."""
    script = ("return [...document.querySelectorAll(arguments[0])]"
              ".filter(e => e.getBBox().width > 0 && e.getBBox().height > 0).length")
    return int(driver.execute_script(script, css))


@pytest.mark.timeout(150)
def test_every_machine_is_shown_live_with_the_count_prodsmart_holds(
        tmp_path: Path, browser: WebDriver, artifacts: Path) -> None:  # noqa: F811
    # PACK-03 has no downtime types in Prodsmart: its stops are refused and kept as dead letters.
    types = ["Maintenance", "Material shortage"]
    sandbox = start_sandbox(SandboxOptions(machines={"PRESS-01": types, "OVEN-02": types, "PACK-03": []}))
    port = free_port()
    t0 = time.time()
    text = SIMULATED.format(url=sandbox.url, db=tmp_path / "agent.db", metrics_port=port,
                            start=t0 + 3, stop=t0 + 18,
                            machines="".join(MACHINE.format(code=c, unit=i) for i, c in enumerate(CODES)))
    agent = AgentProcess(write_config(tmp_path / "agent.yaml", text), agent_env(sandbox))
    try:
        agent.start()
        wait_until(lambda: _reachable(port), 30, message="the agent's HTTP listener")
        browser.get(f"http://127.0.0.1:{port}/")
        first = wait_until(lambda: _updates(browser), 20, message="the first update of the page")
        wait_until(lambda: _updates(browser) >= first + 2, 20, message="live updates without reloading")
        assert set(_cells(browser, "td.acked")) == set(CODES)

        # SIGKILL mid-production: the page says the agent does not answer, and comes back by itself.
        _sleep_until(t0 + 7)
        agent.kill()
        live = "return document.getElementById('live').className"
        wait_until(lambda: browser.execute_script(live) == "live lost", 10, message="the page to see it")
        browser.save_screenshot(str(artifacts / "console-agent-gone.png"))
        before = _updates(browser)
        agent.start()
        wait_until(lambda: _updates(browser) >= before + 2, 30, message="live updates after the restart")
        assert browser.execute_script(live) == "live ok"

        def matches() -> bool:
            counters = sandbox.ledger().counters
            acked, read = _cells(browser, "td.acked"), _cells(browser, "td.read")
            return time.time() > t0 + 19 and all(
                counters.get(c, {}).get("count") is not None
                and acked[c] == read[c] == str(counters[c]["count"]) for c in CODES)

        wait_until(matches, 60, interval=0.5, message="the page's counts to equal the sandbox ledger")
        assert all(int(v) > 50 for v in _cells(browser, "td.acked").values())
        alerts = _cells(browser, "td:last-child")
        assert "Prodsmart refused" in alerts["PACK-03"] and alerts["PRESS-01"] == alerts["OVEN-02"] == ""
        wait_until(lambda: _drawn(browser, "#machines rect.share-running") == len(CODES)
                   and _drawn(browser, "#machines rect.share-stopped") >= len(CODES), 10,
                   message="each machine's last-hour bar (running and stopped)")
        browser.save_screenshot(str(artifacts / "console-overview.png"))

        browser.get(f"http://127.0.0.1:{port}/#/m/PRESS-01")
        wait_until(lambda: _drawn(browser, "#timeline rect.seg") >= 2, 20,
                   message="the run-state timeline (running and stopped bars)")
        wait_until(lambda: _drawn(browser, "#counts rect.bar-read")
                   and _drawn(browser, "#counts rect.bar-delivered"),
                   20, message="the counts chart (read and delivered bars)")
        states = browser.execute_script(
            "return [...document.querySelectorAll('#timeline rect.seg')].map(e => e.getAttribute('class'))")
        assert any("seg-running" in s for s in states) and any("seg-stopped" in s for s in states)
        roles = [t.split()[0] for t in _texts(browser, "#tags tbody tr td:first-child")]
        assert roles == ["counter", "running", "stop_reason"]
        total = sandbox.ledger().counters["PRESS-01"]["count"]
        counter_row = _texts(browser, "#counters tbody tr td")
        assert counter_row[0] == "count" and counter_row[3] == str(total)
        browser.save_screenshot(str(artifacts / "console-machine.png"))

        browser.get(f"http://127.0.0.1:{port}/#/uplink")
        wait_until(lambda: _drawn(browser, "#calls rect.bar-calls"), 20, message="the calls-a-minute chart")
        assert _drawn(browser, "#calls line.budget-line") == 0  # a line has no area, but it is there:
        assert browser.find_elements(By.CSS_SELECTOR, "#calls line.budget-line")
        assert _texts(browser, '#connections tr[data-connection="sim"] .badge') == ["up"]
        dead = wait_until(lambda: _rows(browser, "#dead tbody tr"), 10, message="the dead letters")
        assert all(r[1] == "PACK-03" and r[2] == "startstop" and r[3] == "400" for r in dead)
        assert all('"running"' in r[5] for r in dead) and all(r[4] for r in dead)  # body and answer
        browser.save_screenshot(str(artifacts / "console-uplink.png"))
    finally:
        agent.close()
        sandbox.stop()


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _reachable(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


MQTT = AGENT_PROLOGUE + """
connections:
  broker:
    mqtt: {{host: 127.0.0.1, port: {broker}, client_id: console-agent, reconnect_min: 100ms,
           reconnect_max: 1s}}
machines:
  PACK-03:
    connection: broker
    counter: {{topic: line/pack03/count}}
    running: {{topic: line/pack03/running}}
    stop_reason: {{tag: {{topic: line/pack03/reason}}, default: Stopped}}
"""
PAYLOADS = ("<script>alert(1)</script>", '<img src=x onerror="window.__pwned=1;alert(2)">')


@pytest.mark.timeout(120)
def test_a_script_published_on_an_mqtt_tag_stays_text(
        tmp_path: Path, browser: WebDriver, artifacts: Path, mosquitto: Mosquitto) -> None:  # noqa: F811
    sandbox = start_sandbox()
    port = free_port()
    text = MQTT.format(url=sandbox.url, db=tmp_path / "agent.db", metrics_port=port, broker=mosquitto.port)
    agent = AgentProcess(write_config(tmp_path / "agent.yaml", text), agent_env(sandbox))
    publisher = Publisher(mosquitto.port)
    try:
        agent.start()
        wait_until(lambda: _reachable(port), 30, message="the agent's HTTP listener")
        wait_until(lambda: _status(port)["connections"].get("broker", {}).get("up"), 30,
                   message="the broker connection")  # the listener may answer before sources start
        publisher.publish("line/pack03/count", "100")
        publisher.publish("line/pack03/running", PAYLOADS[1])
        publisher.publish("line/pack03/reason", PAYLOADS[0])
        tags = lambda: _status(port)["machines"]["PACK-03"]["tags"]  # noqa: E731
        wait_until(lambda: tags()["stop_reason"]["value"] == PAYLOADS[0], 20,
                   message="the payload to reach the agent")
        browser.get(f"http://127.0.0.1:{port}/#/m/PACK-03")
        cell = 'return document.querySelector(\'#tags tr[data-role="{}"] td.value\')?.textContent'
        wait_until(lambda: browser.execute_script(cell.format("stop_reason")) == PAYLOADS[0], 20,
                   message="the stop reason shown as text")
        assert browser.execute_script(cell.format("running")) == PAYLOADS[1]
        time.sleep(2.0)  # a few more live updates: each redraw must stay inert too
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open
        assert browser.execute_script("return window.__pwned") is None
        assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
        browser.save_screenshot(str(artifacts / "console-xss.png"))
    finally:
        publisher.close()
        agent.close()
        sandbox.stop()


def _status(port: int, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


TOKEN = "a-console-token-of-32-characters"
OPEN = AGENT_PROLOGUE.replace("127.0.0.1:{metrics_port}", "0.0.0.0:{metrics_port}") + """
connections:
  sim:
    simulated: {{seed: 5, poll: 200ms}}
machines:
  PRESS-01:
    connection: sim
    counter: {{signal: count}}
"""


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(120)
def test_a_listener_beyond_loopback_needs_the_token(
        tmp_path: Path, browser: WebDriver, artifacts: Path) -> None:  # noqa: F811
    sandbox = start_sandbox()
    ports = {"without": free_port(), "with": free_port()}
    agents = []
    try:
        for name, port in ports.items():
            folder = tmp_path / name
            folder.mkdir()
            text = OPEN.format(url=sandbox.url, db=folder / "agent.db", metrics_port=port)
            env = agent_env(sandbox, {"PRODSMART_EDGE_CONSOLE_TOKEN": TOKEN} if name == "with" else None)
            env.pop("PRODSMART_EDGE_CONSOLE_TOKEN", None) if name == "without" else None
            agents.append(AgentProcess(write_config(folder / "agent.yaml", text), env).start())
        for port in ports.values():
            wait_until(lambda p=port: _reachable(p), 30, message="the agent's HTTP listener")

        # Without a token configured the console is off there; /metrics and /healthz are as before.
        base = f"http://127.0.0.1:{ports['without']}"
        for path in ("/", "/api/status", "/console.js", "/login"):
            status, body = _get(base + path)
            assert status == 403 and "PRODSMART_EDGE_CONSOLE_TOKEN" in body, (path, status)
        assert _get(base + "/metrics")[0] == 200
        assert _get(base + "/healthz")[0] in (200, 503)

        # With a token: nothing without it, everything with it (bearer header or the login form).
        base = f"http://127.0.0.1:{ports['with']}"
        assert _get(base + "/api/status")[0] == 401
        assert _get(base + "/api/status", {"Authorization": "Bearer " + TOKEN[:-1] + "x"})[0] == 401
        assert _get(base + "/api/status", {"Cookie": "prodsmart_console=" + TOKEN})[0] == 401
        assert _get(base + "/")[0] == 303  # to the login form
        status, body = _get(base + "/api/status", {"Authorization": "Bearer " + TOKEN})
        assert status == 200 and "PRESS-01" in json.loads(body)["machines"]
        assert TOKEN not in body and sandbox.options.api_secret not in body
        assert _get(base + "/metrics")[0] == 200

        browser.get(base + "/")
        wait_until(lambda: browser.current_url.endswith("/login"), 10, message="the login form")
        browser.find_element(By.NAME, "token").send_keys("wrong-token-wrong-token")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(lambda: "/login" in browser.current_url and _updates(browser) == 0, 10,
                   message="a wrong token to be refused")
        wait_until(lambda: browser.find_element(By.ID, "wrong").is_displayed(), 10,
                   message="the form to say the token was wrong")
        browser.get(base + "/login")
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(lambda: _updates(browser) >= 2, 20, message="the console after signing in")
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it
        cookie = browser.get_cookie("prodsmart_console")
        assert cookie is not None and cookie["httpOnly"] and TOKEN not in cookie["value"]
        assert TOKEN not in browser.page_source
        browser.save_screenshot(str(artifacts / "console-signed-in.png"))
    finally:
        for agent in agents:
            agent.close()
        sandbox.stop()
