"""The operator's command line and environment."""

from __future__ import annotations

import pytest

from messaging_operator import run
from messaging_operator.memo import OperatorConfig


def test_no_namespace_means_every_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESSAGING_OPERATOR_NAMESPACES", raising=False)
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    args = run.parse_args([])
    assert args.clusterwide


def test_namespaces_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = run.parse_args(["-n", "a", "--namespace", "b"])
    assert not args.clusterwide and args.namespaces == ["a", "b"]
    monkeypatch.setenv("WATCH_NAMESPACE", "x, y")
    assert run.parse_args([]).namespaces == ["x", "y"]
    monkeypatch.setenv("MESSAGING_OPERATOR_NAMESPACES", "z")
    assert run.parse_args([]).namespaces == ["z"]
    assert run.parse_args(["-A"]).clusterwide


def test_ports_and_intervals_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGING_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("MESSAGING_OPERATOR_AUTOSCALE_SECONDS", "2.5")
    args = run.parse_args([])
    assert args.metrics_port == 0 and args.autoscale_seconds == 2.5


def test_kopf_keeps_its_bookkeeping_out_of_the_status() -> None:
    settings = run.build_settings(run.parse_args([]))
    assert settings.persistence.finalizer == "messaging.platform.io/operator"
    assert type(settings.persistence.progress_storage).__name__ == "AnnotationsProgressStorage"
    assert settings.posting.reporting_component == "messaging-operator"


def test_the_registry_holds_every_handler() -> None:
    registry = run.build_registry(OperatorConfig())
    ids = {h.id for h in registry._changing.get_all_handlers()}
    assert {"reconcile-resume", "reconcile-create", "reconcile-update"} <= ids
    timers = {h.id for h in registry._spawning.get_all_handlers()}
    assert timers == {"resync", "autoscale"}
    watchers = {h.id for h in registry._watching.get_all_handlers()}
    assert watchers == {
        "child-deployments",
        "child-jobs",
        "child-services",
        "child-poddisruptionbudgets",
        "child-pods",
    }


def test_a_leading_separator_from_the_messaging_command_is_ignored() -> None:
    args = run.parse_args(["--", "--namespace", "apps", "--metrics-port", "0"])
    assert args.namespaces == ["apps"] and args.metrics_port == 0


def test_leader_election_is_on_by_default_with_client_go_like_timings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MESSAGING_OPERATOR_LEADER_ELECTION", raising=False)
    args = run.parse_args([])
    assert args.leader_election and args.lease_name == "messaging-operator"
    assert args.retry_seconds < args.renew_deadline_seconds < args.lease_seconds
    assert not run.parse_args(["--no-leader-election"]).leader_election
    monkeypatch.setenv("MESSAGING_OPERATOR_LEADER_ELECTION", "false")
    assert not run.parse_args([]).leader_election


def test_watches_are_label_selected_and_kopf_peering_is_off() -> None:
    settings = run.build_settings(run.parse_args([]))
    selectors = set(settings.watching.label_selectors.values())
    assert selectors == {"app.kubernetes.io/managed-by=messaging-operator"}
    assert len(list(settings.watching.label_selectors)) == 5
    assert settings.peering.standalone
