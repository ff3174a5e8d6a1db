"""The Prodsmart sandbox: every documented rule accepted and refused, the ledger, faults, limits, tokens."""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.sandbox import DEFAULT_TYPES, Fault, Ledger, Sandbox, SandboxOptions
from tests.support.harness import ROOT

AUTH = ("sandbox-key", "sandbox-secret")
# Every httpx client builds an SSL context unless given one (~20 ms each): share one.
TLS = ssl.create_default_context()


def open_client(base_url: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=TLS, **kwargs)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with open_client(sandbox.url, auth=AUTH, timeout=5.0) as c:
        yield c


def counter(client: httpx.Client, machine: str, body: Any, **kw: Any) -> httpx.Response:
    return client.post(f"/api/machines/{machine}/counter", json=body, **kw)


def startstop(client: httpx.Client, machine: str, running: Any, type_: str = "Maintenance") -> httpx.Response:
    return client.post(f"/api/machines/{machine}/startstop", json={"type": type_, "running": running})


# -- counter -------------------------------------------------------------------------------------
def test_increasing_counts_are_applied_and_recorded(sandbox: Sandbox, client: httpx.Client) -> None:
    body = {"count": 500, "waste": [{"code": "Waste1", "quantity": 20}],
            "parameters": [{"name": "p1", "value": "v1"}, {"name": "p3", "value": 1}]}
    first = counter(client, "M1", body)
    assert first.status_code == 200
    assert first.json() == {"machine": "M1", "count": 500, "waste": {"Waste1": 20}}
    assert counter(client, "M1", {"count": 501}).status_code == 200
    assert counter(client, "M2", {"count": 0}).status_code == 200
    ledger = sandbox.ledger()
    assert ledger.counters == {"M1": {"count": 501, "waste": {"Waste1": 20}}, "M2": {"count": 0, "waste": {}}}
    assert ledger.parameters == {"M1": {"p1": "v1", "p3": 1}}
    assert [(a["seq"], a["machine"], a["endpoint"], a["body"]) for a in ledger.accepted] == [
        (1, "M1", "counter", body),
        (2, "M1", "counter", {"count": 501}),
        (3, "M2", "counter", {"count": 0}),
    ]
    assert all(a["auth"] == "basic" and a["fault"] is None for a in ledger.accepted)
    assert ledger.rejected == [] and ledger.statuses == {"200": 3}


@pytest.mark.parametrize("count", [500, 499, 0])
def test_a_count_not_greater_than_the_last_is_refused(sandbox: Sandbox, client: httpx.Client,
                                                      count: int) -> None:
    counter(client, "M1", {"count": 500})
    answer = counter(client, "M1", {"count": count})
    assert answer.status_code == 400
    assert answer.text == f"count {count} is not greater than the last count 500"
    ledger = sandbox.ledger()
    assert ledger.counters["M1"]["count"] == 500 and len(ledger.accepted) == 1
    assert ledger.rejected[0] | {"time": 0} == {
        "seq": 2, "time": 0, "machine": "M1", "endpoint": "counter", "body": {"count": count},
        "status": 400, "reason": answer.text}


def test_waste_must_increase_per_code_and_a_refused_call_changes_nothing(sandbox: Sandbox,
                                                                         client: httpx.Client) -> None:
    ok = {"count": 10, "waste": [{"code": "A", "quantity": 2}, {"code": "B", "quantity": 0}]}
    assert counter(client, "M1", ok).status_code == 200
    bad = {"count": 11, "waste": [{"code": "A", "quantity": 3}, {"code": "B", "quantity": 0}],
           "parameters": [{"name": "t", "value": 5}]}
    answer = counter(client, "M1", bad)
    assert answer.status_code == 400 and "'B' quantity 0 is not greater than" in answer.text
    ledger = sandbox.ledger()
    assert ledger.counters["M1"] == {"count": 10, "waste": {"A": 2, "B": 0}}
    assert ledger.parameters == {}
    assert counter(client, "M1", {"waste": [{"code": "B", "quantity": 1}]}).status_code == 200
    assert counter(client, "M1", {"waste": [{"code": "C", "quantity": 1}]}).status_code == 200
    assert sandbox.ledger().counters["M1"] == {"count": 10, "waste": {"A": 2, "B": 1, "C": 1}}


def test_repeat_count_ignore_accepts_an_equal_count_without_change() -> None:
    with Sandbox(SandboxOptions(repeat_count="ignore")) as sb, \
            open_client(sb.url, auth=AUTH) as client:
        counter(client, "M1", {"count": 5, "waste": [{"code": "W", "quantity": 1}]})
        same = counter(client, "M1", {"count": 5, "waste": [{"code": "W", "quantity": 2}]})
        assert same.status_code == 200 and same.json()["count"] == 5
        assert counter(client, "M1", {"count": 4}).status_code == 400
        ledger = sb.ledger()
        assert ledger.counters["M1"] == {"count": 5, "waste": {"W": 2}}
        assert ledger.accepted[1]["ignored"] == ["count"]


def test_waste_without_count_follows_the_option() -> None:
    waste_only = {"waste": [{"code": "W", "quantity": 3}]}
    with Sandbox() as sb, open_client(sb.url, auth=AUTH) as client:
        assert counter(client, "M1", waste_only).status_code == 200
        assert sb.ledger().counters["M1"] == {"count": None, "waste": {"W": 3}}
    with Sandbox(SandboxOptions(waste_requires_count=True)) as sb, \
            open_client(sb.url, auth=AUTH) as client:
        answer = counter(client, "M1", waste_only)
        assert answer.status_code == 400 and "count is required" in answer.text
        assert sb.ledger().counters == {}


BAD_BODIES = {
    "counter": [
        ({}, "needs a count or waste"),
        ([], "must be a JSON object"),
        ({"count": -1}, "integer >= 0"),
        ({"count": 1.5}, "integer >= 0"),
        ({"count": "5"}, "integer >= 0"),
        ({"count": True}, "integer >= 0"),
        ({"count": None}, "integer >= 0"),
        ({"count": 5, "extra": 1}, "unknown field"),
        ({"count": 5, "waste": {"A": 1}}, "must be a list"),
        ({"count": 5, "waste": [{"code": "A"}]}, "exactly 'code' and 'quantity'"),
        ({"count": 5, "waste": [{"code": "A", "quantity": 1}, {"code": "A", "quantity": 2}]}, "twice"),
        ({"count": 5, "parameters": [{"code": "p", "value": 1}]}, "exactly 'name' and 'value'"),
        ({"count": 5, "parameters": [{"name": "p", "value": None}]}, "number or a string"),
        ({"count": 5, "parameters": [{"name": "p", "value": [1]}]}, "number or a string"),
        ({"parameters": [{"name": "p", "value": 1}]}, "needs a count or waste"),
    ],
    "parameters": [
        ({"parameters": [{"name": "t", "value": 1}]}, "exactly 'code' and 'value'"),
        ({"parameters": []}, "must not be empty"),
        ({}, "'parameters' is required"),
        ({"parameters": [{"code": "t", "value": True}]}, "number or a string"),
    ],
    "startstop": [
        ({"type": "Maintenance", "running": True}, "the number 0 or 1, not true"),
        ({"type": "Maintenance", "running": False}, "the number 0 or 1, not false"),
        ({"type": "Maintenance", "running": 2}, "the number 0 or 1"),
        ({"type": "Maintenance", "running": "0"}, "the number 0 or 1"),
        ({"type": "Maintenance", "running": 1.0}, "the number 0 or 1"),
        ({"running": 0}, "'type' is required"),
        ({"type": "Maintenance"}, "'running' is required"),
        ({"type": "", "running": 0}, "non-empty string"),
        ({"type": "Maintenance", "running": 0, "machine": "M1"}, "unknown field"),
    ],
}


@pytest.mark.parametrize(("endpoint", "body", "reason"),
                         [(e, b, r) for e, cases in BAD_BODIES.items() for b, r in cases])
def test_bodies_of_the_wrong_shape_are_refused(sandbox: Sandbox, client: httpx.Client,
                                               endpoint: str, body: Any, reason: str) -> None:
    answer = client.post(f"/api/machines/M1/{endpoint}", json=body)
    assert answer.status_code == 400
    assert reason in answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    ledger = sandbox.ledger()
    assert ledger.accepted == [] and ledger.rejected[0]["reason"] == answer.text


@pytest.mark.parametrize(("content", "headers", "reason"), [
    (b'{"count": 5}', {"Content-Type": "text/plain"}, "Content-Type must be application/json"),
    (b'{"count": 5}', {}, "Content-Type must be application/json"),
    (b'{"count": 5', {"Content-Type": "application/json"}, "not valid JSON"),
    (b'{"count": NaN}', {"Content-Type": "application/json"}, "not valid JSON"),
    (b"", {"Content-Type": "application/json"}, "not valid JSON"),
    (b'\xff{"count": 5}', {"Content-Type": "application/json"}, "not valid JSON"),
])
def test_wrong_media_type_or_broken_json_is_refused(sandbox: Sandbox, client: httpx.Client,
                                                    content: bytes, headers: dict[str, str],
                                                    reason: str) -> None:
    answer = client.post("/api/machines/M1/counter", content=content, headers=headers)
    assert answer.status_code == 400 and reason in answer.text
    assert sandbox.ledger().counters == {}


def test_json_content_type_with_charset_is_accepted(client: httpx.Client) -> None:
    answer = client.post("/api/machines/M1/counter", content=b'{"count": 1}',
                         headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 200


def test_json_error_format_option() -> None:
    with Sandbox(SandboxOptions(error_format="json")) as sb, open_client(sb.url, auth=AUTH) as c:
        counter(c, "M1", {"count": 3})
        answer = counter(c, "M1", {"count": 3})
        assert answer.status_code == 400
        assert answer.json() == {"error": "count 3 is not greater than the last count 3"}


# -- parameters and startstop ------------------------------------------------------------------------
def test_parameters_endpoint_keeps_the_last_value_per_code(sandbox: Sandbox, client: httpx.Client) -> None:
    body = {"parameters": [{"code": "temperature", "value": 25}, {"code": "valid", "value": "yes"}]}
    assert client.post("/api/machines/M1/parameters", json=body).status_code == 200
    again = {"parameters": [{"code": "temperature", "value": 25.5}]}
    assert client.post("/api/machines/M1/parameters", json=again).status_code == 200
    ledger = sandbox.ledger()
    assert ledger.parameters == {"M1": {"temperature": 25.5, "valid": "yes"}}
    assert [a["endpoint"] for a in ledger.accepted] == ["parameters", "parameters"]


def test_stop_opens_a_downtime_and_start_closes_it(sandbox: Sandbox, client: httpx.Client) -> None:
    assert startstop(client, "M1", 0, "Maintenance").json() == {"machine": "M1", "running": 0}
    assert startstop(client, "M1", 1, "Maintenance").json() == {"machine": "M1", "running": 1}
    assert startstop(client, "M1", 0, "Material shortage").status_code == 200
    ledger = sandbox.ledger()
    assert [(r["running"], r["type"]) for r in ledger.runs["M1"]] == [
        (0, "Maintenance"), (1, "Maintenance"), (0, "Material shortage")]
    first, second = ledger.downtimes["M1"]
    assert first["type"] == "Maintenance" and first["end"] is not None and first["end"] >= first["start"]
    assert second == {"type": "Material shortage", "start": ledger.runs["M1"][2]["time"], "end": None}
    assert ledger.repeats == {}


def test_a_repeated_state_is_accepted_and_recorded_as_a_repeat(sandbox: Sandbox,
                                                               client: httpx.Client) -> None:
    assert startstop(client, "M1", 1).status_code == 200  # running already: a machine starts running
    assert startstop(client, "M1", 0, "Maintenance").status_code == 200
    assert startstop(client, "M1", 0, "Stopped").status_code == 200
    ledger = sandbox.ledger()
    assert [(r["running"], r["type"]) for r in ledger.runs["M1"]] == [(0, "Maintenance")]
    assert [(r["running"], r["type"]) for r in ledger.repeats["M1"]] == [(1, "Maintenance"), (0, "Stopped")]
    opened = ledger.runs["M1"][0]["time"]
    assert ledger.downtimes["M1"] == [{"type": "Maintenance", "start": opened, "end": None}]
    assert [a["repeated"] for a in ledger.accepted] == [True, False, True]


def test_repeat_running_reject_option() -> None:
    with Sandbox(SandboxOptions(repeat_running="reject")) as sb, open_client(sb.url, auth=AUTH) as c:
        assert startstop(c, "M1", 0).status_code == 200
        answer = startstop(c, "M1", 0)
        assert answer.status_code == 400 and answer.text == "machine M1 is already stopped"
        assert len(sb.ledger().runs["M1"]) == 1


def test_downtime_types_and_machines_come_from_the_options() -> None:
    options = SandboxOptions(machines={"M1": ["Setup", "Breakdown"], "M2": ["Stopped"]})
    with Sandbox(options) as sb, open_client(sb.url, auth=AUTH) as client:
        assert startstop(client, "M1", 0, "Setup").status_code == 200
        wrong = startstop(client, "M1", 1, "Stopped")
        assert wrong.status_code == 400
        assert wrong.text == "downtime type 'Stopped' is not assigned to machine M1"
        unknown = counter(client, "M9", {"count": 1})
        assert unknown.status_code == 404 and "M9" in unknown.text
        assert startstop(client, "M9", 0, "Stopped").status_code == 404
        assert counter(client, "M2", {"count": 1}).status_code == 200
        assert sb.ledger().counters == {"M2": {"count": 1, "waste": {}}}


def test_any_machine_takes_the_default_types(client: httpx.Client) -> None:
    for type_ in DEFAULT_TYPES:
        assert startstop(client, "ANY-1", 0, type_).status_code == 200
    refused = startstop(client, "ANY-1", 0, "Coffee")
    assert refused.text == "downtime type 'Coffee' is not assigned to machine ANY-1"


def test_machine_codes_are_percent_decoded(sandbox: Sandbox, client: httpx.Client) -> None:
    assert client.post("/api/machines/Line%201/counter", json={"count": 1}).status_code == 200
    assert sandbox.ledger().counters == {"Line 1": {"count": 1, "waste": {}}}


def test_unknown_paths_and_methods(sandbox: Sandbox, client: httpx.Client) -> None:
    assert client.post("/api/machines/M1/downtime", json={}).status_code == 404
    assert client.post("/api/machines/counter", json={}).status_code == 404
    wrong_method = client.get("/api/machines/M1/counter")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert sandbox.ledger().accepted == []


def test_paths_prefix_is_configurable() -> None:
    with Sandbox(SandboxOptions(paths_prefix="/api/v1")) as sb, open_client(sb.url, auth=AUTH) as c:
        assert counter(c, "M1", {"count": 1}).status_code == 404
        assert c.post("/api/v1/machines/M1/counter", json={"count": 1}).status_code == 200


# -- authentication -------------------------------------------------------------------------------
def test_machine_endpoints_need_basic_credentials_or_a_token(sandbox: Sandbox) -> None:
    with open_client(sandbox.url) as anonymous:
        missing = counter(anonymous, "M1", {"count": 1})
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic")
        assert counter(anonymous, "M1", {"count": 1}, auth=("sandbox-key", "wrong")).status_code == 401
        assert counter(anonymous, "M1", {"count": 1}, params={"access_token": "nope"}).status_code == 401
        assert counter(anonymous, "M1", {"count": 1}, auth=AUTH).status_code == 200
    ledger = sandbox.ledger()
    assert [r["status"] for r in ledger.rejected] == [401, 401, 401]
    assert ledger.counters["M1"]["count"] == 1


def test_token_lifecycle(sandbox: Sandbox) -> None:
    with open_client(sandbox.url) as c:
        assert c.get("/api/authorization", auth=AUTH).status_code == 404
        created = c.post("/api/authorization", auth=AUTH, json={"scopes": ["productions_write"]})
        assert created.status_code == 201
        body = created.json()
        assert body["scopes"] == ["productions_write"] and "_links" in body and len(body["token"]) >= 16
        token = body["token"]
        assert c.get("/api/authorization", auth=AUTH).json()["token"] == token
        used = counter(c, "M1", {"count": 7}, params={"access_token": token})
        assert used.status_code == 200
        # Basic only on /authorization: a token does not get you a token.
        assert c.get("/api/authorization", params={"access_token": token}).status_code == 401
        assert c.delete("/api/authorization", auth=AUTH).status_code == 204
        assert counter(c, "M1", {"count": 8}, params={"access_token": token}).status_code == 401
        assert c.get("/api/authorization", auth=AUTH).status_code == 404
    ledger = sandbox.ledger()
    assert ledger.accepted[0]["auth"] == "token"
    assert [(a["method"], a["status"]) for a in ledger.authorizations] == [
        ("GET", 404), ("POST", 201), ("GET", 200), ("GET", 401), ("DELETE", 204), ("GET", 404)]


def test_a_new_token_replaces_the_old_one_unless_configured(sandbox: Sandbox) -> None:
    scopes = {"scopes": ["productions_write"]}
    with open_client(sandbox.url, auth=AUTH) as c:
        old = c.post("/api/authorization", json=scopes).json()["token"]
        new = c.post("/api/authorization", json=scopes).json()["token"]
        assert old != new
        assert counter(c, "M1", {"count": 1}, params={"access_token": old}, auth=None).status_code == 401
        sandbox.set_options(post_replaces_token=False)
        newer = c.post("/api/authorization", json=scopes).json()["token"]
        assert counter(c, "M1", {"count": 2}, params={"access_token": new}, auth=None).status_code == 200
        assert c.get("/api/authorization").json()["token"] == newer


def test_tokens_expire(sandbox: Sandbox) -> None:
    sandbox.set_options(token_ttl=0.2)
    with open_client(sandbox.url) as c:
        created = c.post("/api/authorization", auth=AUTH, json={"scopes": ["productions_write"]})
        token = created.json()["token"]
        assert counter(c, "M1", {"count": 1}, params={"access_token": token}).status_code == 200
        time.sleep(0.25)
        expired = counter(c, "M1", {"count": 2}, params={"access_token": token})
        assert expired.status_code == 401 and "expired" in expired.text
        assert c.get("/api/authorization", auth=AUTH).status_code == 404
    assert sandbox.ledger().counters["M1"]["count"] == 1


def test_authorization_requests_are_checked(sandbox: Sandbox) -> None:
    with open_client(sandbox.url) as c:
        assert c.post("/api/authorization", json={"scopes": ["productions_write"]}).status_code == 401
        assert c.post("/api/authorization", auth=AUTH, json={"scopes": []}).status_code == 400
        assert c.post("/api/authorization", auth=AUTH, content=b"{}").status_code == 400
        assert c.put("/api/authorization", auth=AUTH, json={}).status_code == 405
        token = c.post("/api/authorization", auth=AUTH, json={"scopes": ["productions_read"]}).json()["token"]
        answer = counter(c, "M1", {"count": 1}, params={"access_token": token})
        assert answer.status_code == 403 and "productions_write" in answer.text


def test_downtimes_resource_lists_what_startstop_did(sandbox: Sandbox, client: httpx.Client) -> None:
    startstop(client, "M1", 0, "Maintenance")
    startstop(client, "M2", 0, "Stopped")
    token = client.post("/api/authorization", json={"scopes": ["productions_write"]}).json()["token"]
    assert client.get("/api/downtimes").status_code == 401  # Basic is for the machine endpoints only
    with open_client(sandbox.url) as c:
        listed = c.get("/api/downtimes", params={"access_token": token, "machine": "M1"}).json()
        assert len(listed) == 1
        assert listed[0]["downtime-type"] == "Maintenance" and listed[0]["end-time"] is None
        assert listed[0]["machines"] == [{"code": "M1", "name": "M1"}]
        assert listed[0]["start-time"].endswith("Z")
        later = {"access_token": token, "start-time-after": "2999-01-01T00:00:00Z"}
        assert c.get("/api/downtimes", params=later).json() == []
        assert len(c.get("/api/downtimes", params={"access_token": token}).json()) == 2
        bad = c.get("/api/downtimes", params={"access_token": token, "page": "0"})
        assert bad.status_code == 400


# -- rate limit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["seconds", "http-date"])
def test_rate_limit_per_company_with_retry_after(fmt: str) -> None:
    options = SandboxOptions(requests_per_minute=5, retry_after_format=fmt)
    with Sandbox(options) as sb, open_client(sb.url, auth=AUTH) as c:
        assert c.get("/api/authorization").status_code == 404  # /authorization counts too
        for i in range(4):
            assert counter(c, f"M{i}", {"count": 1}).status_code == 200
        limited = counter(c, "M9", {"count": 1})
        assert limited.status_code == 429
        value = limited.headers["retry-after"]
        if fmt == "seconds":
            assert value.isdigit() and 55 <= int(value) <= 60
        else:
            delay = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            assert 55 <= delay <= 61
        assert counter(c, "M9", {"count": 1}, auth=("x", "y")).status_code == 429  # before auth
        assert c.get("/_sandbox/ledger").status_code == 200  # control endpoints are exempt
        ledger = sb.ledger()
        assert "M9" not in ledger.counters
        assert ledger.statuses == {"404": 1, "200": 4, "429": 2}
        assert [r["status"] for r in ledger.rejected] == [404, 429, 429]


def test_rate_limit_window_slides() -> None:
    with Sandbox(SandboxOptions(requests_per_minute=2)) as sb, open_client(sb.url, auth=AUTH) as c:
        counter(c, "M1", {"count": 1})
        counter(c, "M1", {"count": 2})
        assert counter(c, "M1", {"count": 3}).status_code == 429
        sb.set_options(requests_per_minute=0)  # 0 = no limit
        assert counter(c, "M1", {"count": 3}).status_code == 200


# -- faults -------------------------------------------------------------------------------------------
def test_status_fault_answers_without_applying(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="status", status=503, count=2))
    assert counter(client, "M1", {"count": 1}).status_code == 503
    assert counter(client, "M1", {"count": 1}).status_code == 503
    assert counter(client, "M1", {"count": 1}).status_code == 200
    ledger = sandbox.ledger()
    assert ledger.counters["M1"]["count"] == 1 and len(ledger.accepted) == 1
    assert [f["kind"] for f in ledger.faulted] == ["status", "status"]
    assert [r["status"] for r in ledger.rejected] == [503, 503]


def test_drop_before_closes_the_connection_without_applying(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="drop_before"))
    with pytest.raises(httpx.TransportError):
        counter(client, "M1", {"count": 1})
    assert sandbox.ledger().counters == {}
    assert counter(client, "M1", {"count": 1}).status_code == 200
    ledger = sandbox.ledger()
    assert ledger.faulted[0]["applied"] is False and ledger.statuses == {"dropped": 1, "200": 1}


def test_drop_after_applies_then_closes_the_connection(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="drop_after", endpoint="counter"))
    with pytest.raises(httpx.TransportError):
        counter(client, "M1", {"count": 10})
    ledger = sandbox.ledger()
    assert ledger.counters["M1"]["count"] == 10
    assert ledger.accepted[0]["fault"] == "drop_after" and ledger.faulted[0]["applied"] is True
    retry = counter(client, "M1", {"count": 10})  # the client's retry of a call it never saw answered
    assert retry.status_code == 400 and "not greater than" in retry.text


def test_drop_really_aborts_the_tcp_connection(sandbox: Sandbox) -> None:
    sandbox.inject(Fault(kind="drop_after"))
    conn = http.client.HTTPConnection("127.0.0.1", int(sandbox.url.rsplit(":", 1)[1]), timeout=2)
    try:
        conn.request("POST", "/api/machines/M1/counter", body=b'{"count": 1}',
                     headers={"Content-Type": "application/json", "Authorization": _basic()})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()


def test_timeout_fault_holds_the_answer_and_applies_only_when_asked(sandbox: Sandbox,
                                                                   client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="timeout", delay=0.4))
    start = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        counter(client, "M1", {"count": 1}, timeout=0.15)
    assert time.monotonic() - start < 0.4
    assert sandbox.ledger().counters == {}
    sandbox.inject(Fault(kind="timeout", delay=0.4, apply=True))
    with pytest.raises(httpx.TimeoutException):
        counter(client, "M1", {"count": 2}, timeout=0.15)
    assert sandbox.ledger().counters["M1"]["count"] == 2
    sandbox.inject(Fault(kind="timeout", delay=0.2, apply=True))
    slow = counter(client, "M1", {"count": 3}, timeout=2)  # a patient client gets the real answer
    assert slow.status_code == 200 and slow.elapsed.total_seconds() >= 0.2


def test_rate_limit_fault_is_a_429_storm(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="rate_limit", count=3, retry_after=7))
    answers = [counter(client, "M1", {"count": 1}) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 429, 200]
    assert answers[0].headers["retry-after"] == "7"


def test_outage_refuses_everything_for_a_while(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="outage", seconds=0.3))
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            counter(client, "M1", {"count": 1})
    assert client.get("/_sandbox/ledger").status_code == 200  # faults never hit control endpoints
    time.sleep(0.3)
    assert counter(client, "M1", {"count": 1}).status_code == 200
    assert sandbox.faults() == []


def test_count_minus_one_hits_until_cleared_and_filters_apply(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(kind="status", status=502, count=-1, machine="M1", endpoint="counter"))
    assert [counter(client, "M1", {"count": i + 1}).status_code for i in range(3)] == [502] * 3
    assert counter(client, "M2", {"count": 1}).status_code == 200
    assert startstop(client, "M1", 0).status_code == 200
    sandbox.clear_faults()
    assert counter(client, "M1", {"count": 1}).status_code == 200


def test_probability_is_deterministic_with_a_seed() -> None:
    def pattern() -> list[int]:
        with Sandbox() as sb, open_client(sb.url, auth=AUTH) as c:
            sb.inject(Fault(kind="status", status=500, count=-1, probability=0.5, seed=42))
            return [counter(c, "M1", {"count": i + 1}).status_code for i in range(12)]

    first = pattern()
    assert first == pattern()
    assert set(first) == {200, 500}


def test_control_endpoints_over_http(sandbox: Sandbox, client: httpx.Client) -> None:
    injected = client.post("/_sandbox/faults", json={"kind": "status", "status": 500, "count": 1})
    assert injected.status_code == 200 and injected.json()["faults"][0]["status"] == 500
    assert client.get("/_sandbox/faults").json()[0]["kind"] == "status"
    assert client.delete("/_sandbox/faults").status_code == 204
    assert client.post("/_sandbox/faults", json={"kind": "meteor"}).status_code == 400
    assert client.post("/_sandbox/faults", content=b"{").status_code == 400
    changed = client.post("/_sandbox/options", json={"machines": {"M1": ["Setup"]}, "token_ttl": 60})
    assert changed.status_code == 200 and changed.json()["machines"] == {"M1": ["Setup"]}
    assert sandbox.options.token_ttl == 60
    assert client.post("/_sandbox/options", json={"colour": "red"}).status_code == 400
    assert client.post("/_sandbox/options", json={"repeat_count": "maybe"}).status_code == 400
    assert counter(client, "M2", {"count": 1}).status_code == 404
    assert counter(client, "M1", {"count": 1}).status_code == 200
    over_http = Ledger.from_json(client.get("/_sandbox/ledger").json())
    assert over_http == sandbox.ledger()
    assert client.post("/_sandbox/reset").status_code == 204
    assert sandbox.ledger().accepted == [] and sandbox.ledger().counters == {}
    assert counter(client, "M1", {"count": 1}).status_code == 200  # the options stay, the state goes
    assert client.get("/_sandbox/nothing").status_code == 404


# -- server -------------------------------------------------------------------------------------------
def test_keep_alive_and_content_length(sandbox: Sandbox) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(sandbox.url.rsplit(":", 1)[1]), timeout=2)
    try:
        headers = {"Content-Type": "application/json", "Authorization": _basic()}
        for i in range(3):
            conn.request("POST", "/api/machines/M1/counter", body=json.dumps({"count": i}), headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            assert answer.status == 200 and answer.version == 11
            assert int(answer.headers["Content-Length"]) == len(body)
        sock = conn.sock
        conn.request("POST", "/api/machines/M1/counter", body=b'{"count": 0}', headers=headers)
        refused = conn.getresponse()
        assert refused.status == 400 and len(refused.read()) == int(refused.headers["Content-Length"])
        assert conn.sock is sock  # one connection for every request
    finally:
        conn.close()


def test_stop_does_not_wait_for_idle_keep_alive_connections() -> None:
    sb = Sandbox().start()
    with open_client(sb.url, auth=AUTH) as c:
        counter(c, "M1", {"count": 1})
        sb.inject(Fault(kind="timeout", delay=30))
        held = lambda: counter(c, "M1", {"count": 2}, timeout=10)  # noqa: E731
        blocked = threading.Thread(target=_swallow, args=(held,))
        blocked.start()
        time.sleep(0.1)
        start = time.monotonic()
        sb.stop()
        blocked.join(5)
        assert time.monotonic() - start < 2 and not blocked.is_alive()


def test_concurrent_clients_keep_the_ledger_consistent(sandbox: Sandbox) -> None:
    sandbox.set_options(requests_per_minute=0)

    def own_machine(n: int) -> None:
        with open_client(sandbox.url, auth=AUTH) as c:
            for count in range(1, 16):
                assert counter(c, f"T{n}", {"count": count * 10}).status_code == 200

    def shared_machine(n: int) -> None:
        rng = random.Random(n)
        with open_client(sandbox.url, auth=AUTH) as c:
            for _ in range(10):
                counter(c, "SHARED", {"count": rng.randrange(1000)})

    threads = [threading.Thread(target=own_machine, args=(n,)) for n in range(20)]
    threads += [threading.Thread(target=shared_machine, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ledger = sandbox.ledger()
    assert {m: ledger.counters[m]["count"] for m in ledger.counters if m != "SHARED"} == {
        f"T{n}": 150 for n in range(20)}
    shared = [a["body"]["count"] for a in ledger.accepted if a["machine"] == "SHARED"]
    assert shared == sorted(set(shared)) and ledger.counters["SHARED"]["count"] == shared[-1]
    assert len(ledger.accepted) + len(ledger.rejected) == 20 * 15 + 5 * 10
    assert [e["seq"] for e in ledger.accepted] == sorted(e["seq"] for e in ledger.accepted)


def test_runs_as_a_separate_process(tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"machines": {"M1": ["Setup"]}, "api_key": "k", "api_secret": "s"}))
    ledger_file = tmp_path / "ledger.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sandbox", "--port", "0", "--options", str(options),
         "--ledger-file", str(ledger_file)], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("SANDBOX_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        with open_client(url, auth=("k", "s")) as c:
            assert counter(c, "M1", {"count": 3}).status_code == 200
            assert startstop(c, "M1", 0, "Setup").status_code == 200
            assert counter(c, "M2", {"count": 3}).status_code == 404
            assert c.post("/_sandbox/faults", json={"kind": "drop_after"}).status_code == 200
            with pytest.raises(httpx.TransportError):
                counter(c, "M1", {"count": 4})
            assert c.get("/_sandbox/ledger").json()["counters"]["M1"]["count"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    saved = Ledger.from_json(json.loads(ledger_file.read_text()))
    assert saved.counters == {"M1": {"count": 4, "waste": {}}}
    assert [r["type"] for r in saved.runs["M1"]] == ["Setup"]


def test_options_and_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="repeat_count"):
        SandboxOptions(repeat_count="sometimes")
    with pytest.raises(ValueError, match="kind"):
        Fault(kind="gremlins")
    with pytest.raises(ValueError, match="probability"):
        Fault(kind="status", probability=2)
    assert Fault(kind="outage", seconds=1).hits == -1 and Fault(kind="status").hits == 1
    assert Fault.from_json(Fault(kind="timeout", delay=2, apply=True).to_json()) == \
        Fault(kind="timeout", delay=2, apply=True)


def _basic() -> str:
    return httpx.BasicAuth(*AUTH)._auth_header


def _swallow(call: Any) -> None:
    try:
        call()
    except httpx.TransportError:
        pass
