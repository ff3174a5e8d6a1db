"""The console over HTTP, in process: pages, /api/status, the door, and requests that are not HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config.loader import parse_config
from agent.runtime.console.web import Console, read_request
from agent.runtime.endpoints import serve_http
from agent.runtime.service import Agent
from agent.uplink.client import Credentials
from tests.conftest import free_port
from tests.support.harness import ROOT

CONFIG = """
prodsmart: {{url: "http://127.0.0.1:9"}}
storage: {{path: {db}}}
metrics: {{listen: "{listen}"}}
connections:
  sim:
    simulated: {{seed: 1}}
machines:
  M1:
    connection: sim
    counter: {{signal: count}}
"""
KEY, SECRET, TOKEN = "the-api-key-1234", "the-api-secret-5678", "console-token-0123456789"


async def _ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    headers.setdefault("Host", f"127.0.0.1:{port}")
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return await _ask(port, f"GET {path} HTTP/1.1\r\n{extra}\r\n".encode())


async def _serve(tmp_path: Path, host: str, token: str | None) -> AsyncIterator[int]:
    port = free_port()
    listen = f"{host}:{port}"
    cfg = parse_config(CONFIG.format(db=tmp_path / "agent.db", listen=listen))
    agent = Agent(cfg, Credentials(KEY, SECRET))
    server = await serve_http(agent, listen, Console(agent, listen, token))
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _serve(tmp_path, "127.0.0.1", TOKEN):
        yield port


@pytest.fixture
async def open_listener(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _serve(tmp_path, "0.0.0.0", TOKEN):
        yield port


async def test_the_page_its_files_and_the_json_on_loopback(loopback: int) -> None:
    status, headers, body = await get(loopback, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"] and b"/console.js" in body
    assert b"<script>" not in body.replace(b' src="/console.js" defer></script>', b"")  # no inline script
    status, headers, body = await get(loopback, "/console.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"textContent" in body
    assert b"innerHTML" not in body
    status, headers, body = await get(loopback, "/api/status?machine=M1")
    data = json.loads(body)
    assert status == 200 and list(data["machines"]) == ["M1"]
    assert data["machines"]["M1"]["tags"]["counter"]["quality"] is None
    assert data["detail"] is None  # the agent is not running: no machine logic yet
    for secret in (KEY, SECRET, TOKEN):
        assert secret.encode() not in body
    assert (await get(loopback, "/status"))[0] == 200
    assert (await get(loopback, "/metrics"))[0] == 200
    assert (await get(loopback, "/nothing-here"))[0] == 404


async def test_a_request_for_another_host_name_is_refused_on_loopback(loopback: int) -> None:
    """DNS rebinding: a web page whose name now points at 127.0.0.1 must not read the console,
    nor the tag values of /status, the metrics or the health problems."""
    for path in ("/", "/api/status", "/status", "/metrics", "/healthz"):
        status, _, body = await get(loopback, path, Host=f"evil.example:{loopback}")
        assert status == 403 and b"machines" not in body and b"prodsmart_edge" not in body, path
        assert (await get(loopback, path, Host=f"localhost:{loopback}"))[0] in (200, 503), path
    assert (await get(loopback, "/metrics", Host=f"[::1]:{loopback}"))[0] == 200
    # A probe that sends no Host at all (HTTP/1.0) is no browser: answered.
    assert (await _ask(loopback, b"GET /metrics HTTP/1.0\r\n\r\n"))[0] == 200


async def test_beyond_loopback_the_metrics_answer_any_host_name(open_listener: int) -> None:
    """Prometheus scrapes a line PC by whatever name or address it knows it by."""
    for host in ("line3-pc.plant.example:9108", "192.168.10.5"):
        assert (await get(open_listener, "/metrics", Host=host))[0] == 200


async def test_what_is_not_http_is_dropped_and_the_listener_goes_on(loopback: int) -> None:
    for raw in (b"\r\n", b"GET\r\n\r\n", b"POST /login HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
                b"GET / HTTP/1.1\r\nContent-Length: nonsense\r\n\r\n", b"\xff\xfe\x00 / HTTP/1.1\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", loopback)
        writer.write(raw)
        await writer.drain()
        assert b"200 OK" not in await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert (await get(loopback, "/api/status"))[0] == 200


async def test_a_client_dripping_its_headers_is_cut_off_at_the_deadline() -> None:
    """The deadline is for the whole request, not for each line (which let a client that sends a
    header every few seconds hold the connection for minutes)."""
    reader = asyncio.StreamReader()
    reader.feed_data(b"GET /status HTTP/1.1\r\n")

    async def drip() -> None:
        for i in range(20):
            await asyncio.sleep(0.2)
            reader.feed_data(f"X-Slow-{i}: y\r\n".encode())

    dripping = asyncio.create_task(drip())
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await read_request(reader, timeout=1.0)
    dripping.cancel()
    assert time.monotonic() - start < 1.5


async def test_beyond_loopback_the_token_opens_the_console(open_listener: int) -> None:
    port = open_listener
    assert (await get(port, "/api/status"))[0] == 401
    status, headers, _ = await get(port, "/")
    assert status == 303 and headers["location"] == "/login"
    assert (await get(port, "/login"))[0] == 200
    assert (await get(port, "/console.css"))[0] == 200 and (await get(port, "/login.js"))[0] == 200
    assert (await get(port, "/console.js"))[0] == 303
    assert (await get(port, "/api/status", Authorization=f"Bearer {TOKEN}"))[0] == 200
    assert (await get(port, "/metrics"))[0] == 200 and (await get(port, "/status"))[0] == 200

    form = b"token=wrong"
    status, headers, _ = await _ask(port, b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-"
                                          b"urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form))
    assert status == 303 and "set-cookie" not in headers and headers["location"].startswith("/login")
    form = f"token={TOKEN}".encode()
    status, headers, _ = await _ask(port, b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-"
                                          b"urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form))
    assert status == 303 and headers["location"] == "/"
    session = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and TOKEN not in session
    assert (await get(port, "/api/status", Cookie=session))[0] == 200
    assert (await get(port, "/", Cookie=session))[0] == 200


async def test_beyond_loopback_without_a_token_the_console_is_off(tmp_path: Path) -> None:
    async for port in _serve(tmp_path, "0.0.0.0", None):
        for path in ("/", "/api/status", "/login", "/console.js"):
            status, _, body = await get(port, path, Authorization="Bearer anything")
            assert status == 403 and b"PRODSMART_EDGE_CONSOLE_TOKEN" in body
        assert (await get(port, "/metrics"))[0] == 200



def test_the_page_ships_inside_the_package(tmp_path: Path) -> None:
    """The static files are package data: setuptools' build_py (what a wheel holds) carries them."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "-d",
             str(tmp_path / "out")]
    result = subprocess.run(build, cwd=src, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    static = tmp_path / "out" / "agent" / "runtime" / "console" / "static"
    assert {p.name for p in static.iterdir()} == {"index.html", "console.js", "console.css", "login.html",
                                                "login.js"}


async def test_a_secret_that_slipped_into_a_value_is_blanked_out(tmp_path: Path) -> None:
    from agent.runtime.service import ConnectionState

    port = free_port()
    listen = f"127.0.0.1:{port}"
    cfg = parse_config(CONFIG.format(db=tmp_path / "agent.db", listen=listen))
    agent = Agent(cfg, Credentials(KEY, SECRET))
    reason = f"login refused for {KEY}:{SECRET} (token {TOKEN})"
    agent.connections["sim"] = ConnectionState(False, 0.0, reason)
    server = await serve_http(agent, listen, Console(agent, listen, TOKEN))
    try:
        status, _, body = await get(port, "/api/status")
    finally:
        server.close()
        await server.wait_closed()
    reason = json.loads(body)["connections"]["sim"]["reason"]
    assert status == 200 and reason == "login refused for ***:*** (token ***)"


async def test_a_machine_gone_from_the_configuration_is_shown_while_its_calls_drain(tmp_path: Path) -> None:
    from agent.core.model import CounterChanged
    from agent.outbox.store import Outbox

    port = free_port()
    listen = f"127.0.0.1:{port}"
    cfg = parse_config(CONFIG.format(db=tmp_path / "agent.db", listen=listen))
    agent = Agent(cfg, Credentials(KEY, SECRET))
    agent.outbox = await Outbox.open(str(tmp_path / "agent.db"))
    an_hour_ago = time.time() - 3600
    await agent.outbox.commit({}, [CounterChanged("OLD-09", 5), CounterChanged("M1", 7)], an_hour_ago)
    server = await serve_http(agent, listen, Console(agent, listen, None))
    try:
        data = json.loads((await get(port, "/api/status"))[2])
    finally:
        server.close()
        await server.wait_closed()
        await agent.outbox.close()
    assert list(data["machines"]) == ["M1", "OLD-09"]
    old = data["machines"]["OLD-09"]
    assert old["queued"] == 1 and old["tags"] == {} and "not in the configuration" in old["alerts"][0]
    assert data["machines"]["M1"]["queued"] == 1 and 3599 < data["machines"]["M1"]["lag"] < 3700
