"""Who may open the console: loopback listeners are open, others need the token, or the console is off."""

from __future__ import annotations

import pytest

from agent.runtime.console.auth import COOKIE, Gate, cookies, is_loopback

TOKEN = "x" * 20 + "-secret"


@pytest.mark.parametrize(("listen", "loopback"), [
    ("127.0.0.1:9108", True), ("127.1.2.3:1", True), ("[::1]:9108", True), ("localhost:9108", True),
    ("0.0.0.0:9108", False), ("[::]:9108", False), ("192.168.10.5:9108", False), ("agent.local:9108", False),
])
def test_loopback_listeners_are_told_from_the_others(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_a_loopback_listener_needs_nothing_but_a_request_addressed_to_this_machine() -> None:
    gate = Gate("127.0.0.1:9108", None)
    assert gate.mode == "open"
    for host in ("127.0.0.1:9108", "localhost:9108", "LOCALHOST", "[::1]:9108", "127.0.0.1"):
        assert gate.allows({"host": host}), host
    # DNS rebinding: a page of evil.example re-pointed at 127.0.0.1 sends its own name.
    for host in ("evil.example:9108", "evil.example", "", "192.168.1.5:9108", "[::1"):
        assert not gate.allows({"host": host}), host
    assert not gate.allows({})


@pytest.mark.parametrize("token", [None, "", "short-token"])
def test_without_a_usable_token_the_console_is_off_beyond_loopback(token: str | None) -> None:
    gate = Gate("0.0.0.0:9108", token)
    assert gate.mode == "off"
    assert not gate.allows({"authorization": f"Bearer {token}"})
    assert not gate.token_matches(token or "")


def test_beyond_loopback_the_bearer_token_or_the_session_cookie_opens_it() -> None:
    gate = Gate("0.0.0.0:9108", TOKEN)
    assert gate.mode == "token"
    assert not gate.allows({})
    assert gate.allows({"authorization": f"Bearer {TOKEN}"})
    assert gate.allows({"authorization": f"bearer  {TOKEN} "})
    assert not gate.allows({"authorization": f"Bearer {TOKEN[:-1]}"})
    assert not gate.allows({"authorization": f"Basic {TOKEN}"})
    cookie = gate.session_cookie()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    assert gate.allows({"cookie": f"other=1; {value}"})
    assert not gate.allows({"cookie": f"{COOKIE}={TOKEN}"})  # the token itself is not a session
    assert not gate.allows({"cookie": f"{COOKIE}="})


def test_another_token_makes_other_sessions() -> None:
    one, two = Gate("0.0.0.0:1", TOKEN), Gate("0.0.0.0:1", TOKEN + "2")
    assert not two.allows({"cookie": one.session_cookie().split(";")[0]})


def test_cookie_header_parsing_keeps_the_first_of_a_name() -> None:
    assert cookies("a=1; b=2=3; a=4; junk") == {"a": "1", "b": "2=3"}
