"""The alert rules: promtool's unit tests, a runbook for every alert, and the operator's series."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from messaging_operator.telemetry import OperatorMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "messaging-operator" / "files" / "prometheus-rules.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/messaging-platform/messaging-platform/blob/main/docs/runbooks.md"


def _rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", "prometheus-rules-test.yaml"],
        cwd=Path(__file__).parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Every promtool test file of the alerts (the webhooks alert has its own, run by
    # test_webhook_alert.py).
    tests = [Path(__file__).parent / "prometheus-rules-test.yaml"]
    tests += sorted(Path(__file__).parent.glob("*_alert_test.yaml"))
    tested = {name for t in tests for name in re.findall(r"alertname: (\w+)", t.read_text())}
    assert tested == {r["alert"] for r in _rules()} - _untested_legacy()


def _untested_legacy() -> set[str]:
    # The first round's rate and latency alerts are checked by `promtool check rules` and
    # test_observability.py; the unit tests cover the availability alerts and one of those.
    return {
        "MessagingServerErrorRatioHigh",
        "MessagingSendLatencyHigh",
        "MessagingBackplaneListenerDown",
        "MessagingBackplaneLagHigh",
        "MessagingConnectionsServiceFailing",
        "MessagingDatabasePoolSaturated",
        "MessagingTransportAbuse",
    }


def test_every_alert_links_a_runbook_that_says_meaning_confirmation_and_action() -> None:
    text = RUNBOOKS.read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    for rule in _rules():
        alert = str(rule["alert"])
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{alert.lower()}", alert
        assert alert in sections, f"docs/runbooks.md has no section ## {alert}"
        for heading in ("**What it means**", "**How to confirm**", "**What to do**"):
            assert heading in sections[alert], f"{alert}: no {heading}"


def _ready(status: str) -> str:
    return (
        "messaging_operator_cluster_condition"
        f'{{name="main",namespace="chat",status="{status}",type="Ready"}}'
    )


def test_the_operator_exports_each_clusters_phase_and_conditions() -> None:
    metrics = OperatorMetrics()
    metrics.record_status("chat", "main", "Degraded", {"Ready": "False", "RedisReady": "True"})
    text = generate_latest(metrics.registry).decode()
    assert (
        'messaging_operator_cluster_phase{name="main",namespace="chat",phase="Degraded"} 1.0'
        in text
    )
    assert (
        'messaging_operator_cluster_phase{name="main",namespace="chat",phase="Running"} 0.0' in text
    )
    assert f"{_ready('False')} 1.0" in text
    assert f"{_ready('True')} 0.0" in text
    paused = 'status="Unknown",type="ReconciliationPaused"} 1.0'
    assert paused in text  # not written: Unknown
    metrics.record_status("chat", "main", "Running", {"Ready": "True"})
    text = generate_latest(metrics.registry).decode()
    assert f"{_ready('True')} 1.0" in text
    assert f"{_ready('False')} 0.0" in text
    metrics.forget("chat", "main")
    assert 'name="main"' not in generate_latest(metrics.registry).decode()


def test_the_availability_alerts_use_only_the_operators_metrics_and_up() -> None:
    metrics = OperatorMetrics()
    metrics.record_status("chat", "main", "Running", {})
    metrics.desired_replicas.labels("chat", "main").set(1)
    exported = set(
        re.findall(
            r"^(messaging_operator_\w+?)(?:\{| )", generate_latest(metrics.registry).decode(), re.M
        )
    )
    [group] = [
        g
        for g in yaml.safe_load(RULES.read_text())["groups"]
        if g["name"] == "messaging-availability"
    ]
    queried = {n for r in group["rules"] for n in re.findall(r"\b(messaging_\w+)", r["expr"])}
    assert queried and queried <= exported
