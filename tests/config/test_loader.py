"""Configuration: golden test cases (tests/testcases/<case>/{agent.yaml, error | expected})."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.loader import load_config, parse_config
from agent.config.problems import ConfigError
from agent.core.schema import parse_duration

CASES = Path(__file__).parent / "testcases"
ROOT = Path(__file__).resolve().parents[2]


def _cases(kind: str) -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / kind).exists())


@pytest.mark.parametrize("case", _cases("error"))
def test_invalid_config_lists_every_problem_with_file_and_line(case: str) -> None:
    folder = CASES / case
    with pytest.raises(ConfigError) as info:
        load_config(folder / "agent.yaml")
    got = [str(p).replace(str(folder) + "/", "") for p in info.value.problems]
    expected = (folder / "error").read_text().splitlines()
    assert len(got) == len(expected), got
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want), (line, want)


@pytest.mark.parametrize("case", _cases("expected"))
def test_valid_config_loads(case: str) -> None:
    cfg = load_config(CASES / case / "agent.yaml")
    tags = sum(len(c.tags) for c in cfg.connections.values())
    assert f"{tags} tags" == (CASES / case / "expected").read_text().strip()


@pytest.mark.parametrize("path", ["config/agent.example.yaml", "../shared/examples/agent.yaml"])
def test_shipped_examples_are_valid(path: str) -> None:
    full = ROOT / path
    if not full.exists():
        pytest.skip(f"{path} not present in this checkout")
    cfg = load_config(full)
    assert cfg.machines


def test_example_shape_is_understood() -> None:
    cfg = load_config(ROOT / "config/agent.example.yaml")
    press = cfg.machines["PRESS-01"]
    assert press.counter is not None and press.counter.modulus == 2**32
    assert press.waste["Scrap"].modulus == 2**16
    assert press.stop_reason.types == {"1": "Maintenance", "2": "Material shortage"}
    assert press.min_duration == 5.0
    assert cfg.prodsmart.requests_per_minute == 100


def test_one_tag_read_once_for_two_roles() -> None:
    cfg = parse_config("""
connections:
  sim: {simulated: {}}
machines:
  A: {connection: sim, counter: {signal: count, unit: x}, running: {signal: running, unit: x}}
  B: {connection: sim, counter: {signal: count, unit: x}}
""")
    tags = cfg.connections["sim"].tags
    assert len(tags) == 2
    a, b = cfg.machines["A"], cfg.machines["B"]
    assert a.counter is not None and b.counter is not None and a.counter.tag == b.counter.tag


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0), ("10", 10.0)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1", "5 parsecs", "ms", True, -2])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_check_command_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    bad = _cli("check", str(CASES / "unknown-keys-did-you-mean" / "agent.yaml"))
    assert bad.returncode == 1
    assert "agent.yaml:3: prodsmart.requests_per_minut" in bad.stderr
    assert "3 problem(s) found" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    good = _cli("check", str(CASES / "valid-simulated" / "agent.yaml"))
    assert good.returncode == 0, good.stderr
    assert "OK: 1 machines" in good.stdout
    missing = _cli("check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read the file" in missing.stderr


def test_topic_template_names_the_machine_and_delta_role() -> None:
    cfg = parse_config("""
connections:
  broker: {mqtt: {host: 127.0.0.1}}
machines:
  LABEL-04: {connection: broker, counter: {topic: "plant/{machine}/produced", json: qty, mode: delta,
             id: id}}
  LABEL-05: {connection: broker, counter: {topic: "plant/{machine}/produced", json: qty, mode: delta, id: id}}
""")
    bindings = list(cfg.connections["broker"].tags.values())
    topics = sorted(b.spec.topic for b in bindings)
    assert topics == ["plant/LABEL-04/produced", "plant/LABEL-05/produced"]
    assert all("delta" in b.roles for b in bindings)


def test_unknown_tag_key_suggests_the_alias() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("""
connections:
  broker: {mqtt: {host: 127.0.0.1}}
machines:
  P: {connection: broker, counter: {topic: a/b, jsn: count}}
""")
    assert "did you mean 'json'?" in str(info.value)


# --------------------------------------------------------------------------- issue 10 item 16


def test_empty_strings_that_would_lose_data_are_problems_with_their_line(tmp_path: Path) -> None:
    text = """storage:
  path: ""
connections:
  plc: {modbus: {host: ""}}
machines:
  M1: {connection: plc, counter: {holding: 100}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.yaml")
    got = [str(p) for p in info.value.problems]
    assert any(p.startswith("agent.yaml:2: storage.path") for p in got), got
    assert any(p.startswith("agent.yaml:4: connections.plc") and "host" in p for p in got), got


@pytest.mark.parametrize(("name", "content"), [
    ("empty", b""),
    ("comments", b"# nothing here yet\n   \n# still nothing\n"),
    ("binary", bytes(range(256)) * 4),
])
def test_an_unusable_file_gets_file_line_1(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p).startswith(f"{path}:1: ") for p in info.value.problems] == [True], info.value.problems
    checked = _cli("check", str(path))
    assert checked.returncode == 1 and checked.stderr.startswith(f"{path}:1: "), checked.stderr


def test_check_warns_about_a_delta_counter_without_id(tmp_path: Path) -> None:
    """Issue 10 item 14: without an id a QoS 1 redelivery of a delta is counted twice."""
    path = tmp_path / "agent.yaml"
    path.write_text("""connections:
  broker: {mqtt: {host: 127.0.0.1}}
machines:
  LABEL-04: {connection: broker, counter: {topic: a/produced, json: qty, mode: delta}}
  LABEL-05: {connection: broker, counter: {topic: b/produced, json: qty, mode: delta, id: id},
             waste: {Scrap: {topic: b/scrap, json: qty, mode: delta}}}
""")
    checked = _cli("check", str(path))
    assert checked.returncode == 0, checked.stderr
    warnings = [x for x in checked.stderr.splitlines() if "warning" in x]
    assert len(warnings) == 2, checked.stderr
    assert "LABEL-04" in warnings[0] and "counter" in warnings[0] and "id" in warnings[0]
    assert "LABEL-05" in warnings[1] and "Scrap" in warnings[1]
    assert f"{path}:4: " in warnings[0] and f"{path}:6: " in warnings[1]


def test_a_redis_password_written_into_the_url_is_refused_and_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CASES / "budget-errors" / "agent.yaml")
    assert "hunter2" not in str(info.value) and all("hunter2" not in str(p) for p in info.value.problems)


def test_the_commented_budget_of_the_example_is_valid() -> None:
    """Uncommenting `budget:` in config/agent.example.yaml (with a value for each empty key) loads."""
    lines = []
    for line in (ROOT / "config/agent.example.yaml").read_text().splitlines():
        if line.startswith("  # budget:") or (line.startswith("  #   ") and not line.startswith("  #    ")):
            line = "  " + line[4:]
            line = line.replace("fallback_per_minute:    #", "fallback_per_minute: 30 #")
            line = line.replace("tls_ca_file:            #", "tls_ca_file: /etc/ca.pem #")
        lines.append(line)
    cfg = parse_config("\n".join(lines) + "\n")
    assert cfg.prodsmart.budget is not None and cfg.prodsmart.budget.redis == "redis://10.0.0.5:6379/0"
    assert cfg.prodsmart.budget.fallback_per_minute == 30
