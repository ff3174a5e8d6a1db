"""The sandbox's company: several API keys of one company share its rate limit with other integrations."""

from __future__ import annotations

import time

import pytest

from agent.sandbox import Sandbox, SandboxOptions
from tests.sandbox.test_sandbox import AUTH, counter, open_client

OTHERS = {"line-2-key": "line-2-secret", "line-3-key": "line-3-secret"}


def test_every_key_of_the_company_counts_against_one_limit() -> None:
    with Sandbox(SandboxOptions(requests_per_minute=6, clients=OTHERS)) as sb:
        keys = [AUTH, *OTHERS.items()]
        clients = [open_client(sb.url, auth=auth) for auth in keys]
        try:
            statuses = [counter(c, f"M{i}", {"count": n + 1}).status_code
                        for n in range(3) for i, c in enumerate(clients)]
            assert statuses == [200] * 6 + [429] * 3
            assert counter(clients[1], "M1", {"count": 9}, auth=("line-2-key", "wrong")).status_code == 429
        finally:
            for c in clients:
                c.close()
        ledger = sb.ledger()
        assert [r["client"] for r in ledger.accepted] == ["sandbox-key", "line-2-key", "line-3-key"] * 2


def test_each_key_has_its_own_tokens() -> None:
    with Sandbox(SandboxOptions(requests_per_minute=0, clients=OTHERS)) as sb:
        second = ("line-2-key", OTHERS["line-2-key"])
        with open_client(sb.url, auth=AUTH) as a, open_client(sb.url, auth=second) as b:
            token_a = a.post("/api/authorization", json={"scopes": ["productions_write"]}).json()["token"]
            token_b = b.post("/api/authorization", json={"scopes": ["productions_write"]}).json()["token"]
        with open_client(sb.url) as anonymous:
            # a POST by the second key did not revoke the first key's token
            for token in (token_a, token_b):
                assert counter(anonymous, "M1", {"count": 1 + (token == token_b)},
                               params={"access_token": token}).status_code == 200
        assert [r["client"] for r in sb.ledger().accepted] == ["sandbox-key", "line-2-key"]


def test_other_integrations_take_part_of_the_limit() -> None:
    # 60 a minute by others = one a second, from the first request on; the limit is 5.
    with Sandbox(SandboxOptions(requests_per_minute=5, other_integrations_per_minute=60)) as sb, \
            open_client(sb.url, auth=AUTH) as c:
        assert counter(c, "M1", {"count": 1}).status_code == 200  # the others' first went just before
        time.sleep(2.05)  # two more of theirs
        assert counter(c, "M1", {"count": 2}).status_code == 200  # 3 theirs + 2 ours: full
        assert counter(c, "M1", {"count": 3}).status_code == 429
        time.sleep(1.05)  # their next one finds the window full: refused, not counted
        assert counter(c, "M1", {"count": 3}).status_code == 429
        ledger = sb.ledger()
        assert ledger.other_integrations == {"admitted": 3, "refused": 1}
        assert ledger.statuses == {"200": 2, "429": 2}


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        SandboxOptions(other_integrations_per_minute=-1)
