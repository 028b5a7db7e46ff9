"""The operator's spec model agrees with the CRD and refuses what the CRD refuses."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from messaging_operator.errors import InvalidSpecError
from messaging_operator.spec import ClusterSpec, check_name, parse_spec
from tests.operator.samples import MINIMAL_SPEC, PRODUCTION_SPEC

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "messagingclusters.messaging.platform.io.yaml"
DOCS = ROOT / "docs" / "messagingcluster.md"


def crd_schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    return typing.cast(dict[str, Any], doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if (found := _model_of(arg)) is not None:
                return found
    return None


def _walk(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    """Every disagreement between a pydantic model and its CRD schema node."""
    problems = []
    props = schema.get("properties", {})
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    if set(fields) != set(props):
        problems.append(f"{path}: model {sorted(fields)} != crd {sorted(props)}")
    for alias, info in fields.items():
        node = props.get(alias)
        if node is None:
            continue
        sub = _model_of(info.annotation)
        if sub is not None and "properties" in node:
            problems += _walk(sub, node, f"{path}.{alias}")
        elif "default" in node and sub is None:
            default = info.get_default(call_default_factory=True)
            if default != node["default"]:
                problems.append(f"{path}.{alias}: default {default!r} != crd {node['default']!r}")
    return problems


def test_the_spec_model_and_the_crd_schema_have_the_same_fields_and_defaults() -> None:
    spec_schema = crd_schema()["properties"]["spec"]
    assert _walk(ClusterSpec, spec_schema, "spec") == []


def test_every_spec_field_of_the_crd_is_documented() -> None:
    docs = DOCS.read_text()

    def paths(node: dict[str, Any], prefix: str) -> list[str]:
        found = []
        for key, child in node.get("properties", {}).items():
            found.append(f"{prefix}.{key}")
            found += paths(child, f"{prefix}.{key}")
        return found

    schema = crd_schema()["properties"]
    fields = paths(schema["spec"], "spec") + paths(schema["status"], "status")
    missing = [f for f in fields if f"`{f}`" not in docs]
    assert missing == []


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    found = []
    for key, child in (node.get("properties") or {}).items():
        where = f"{path}.{key}" if path else key
        if not str(child.get("description", "")).strip():
            found.append(where)
        found += _undescribed(child, where)
    if isinstance(node.get("items"), dict):
        found += _undescribed(node["items"], f"{path}[]")
    return found


def test_every_property_of_the_crd_has_a_description_for_kubectl_explain() -> None:
    # metadata is the one exception: the API server refuses anything but its type there, and
    # `kubectl explain` shows ObjectMeta's own documentation for it.
    assert _undescribed(crd_schema(), "") == ["metadata"]


def test_the_chart_ships_the_same_crd() -> None:
    chart_crd = ROOT / "charts" / "messaging-operator" / "crds" / CRD.name
    assert chart_crd.read_text() == CRD.read_text()


def test_defaults_of_a_minimal_spec() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    assert spec.replicas.min == 2 and spec.replicas.max == 10
    assert spec.autoscaling.enabled and spec.autoscaling.target_connections_per_pod == 5000
    assert spec.redis.managed is not None and spec.redis.managed.image == "redis:7.2"
    assert spec.auth.algorithms == ["HS256"]
    assert spec.drain.termination_grace_period_seconds == 5 + 25 + 5
    assert not spec.paused


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"replicas": {"min": 5, "max": 2}}, "must not exceed"),
        (
            {"redis": {"managed": {}, "external": {"urlSecretRef": {"name": "r", "key": "u"}}}},
            "exactly one",
        ),
        ({"redis": {}}, "exactly one"),
        ({"auth": {"algorithms": ["HS256"]}}, "jwtSecretRef"),
        (
            {"auth": {"algorithms": ["ES256"], "jwtSecretRef": {"name": "j", "key": "k"}}},
            "publicKeySecretRef",
        ),
        ({"drain": {"windowSeconds": 30, "shutdownDeadlineSeconds": 30}}, "must exceed"),
        ({"image": ""}, "image"),
        ({"autoscaling": {"targetConnectionsPerPod": 0}}, "targetConnectionsPerPod"),
        (
            {"auth": {"jwtSecretRef": {"name": "j", "key": "k"}, "algorithms": ["none"]}},
            "auth.algorithms",
        ),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(complaint)):
        parse_spec({**MINIMAL_SPEC, **change})


def test_a_spec_without_required_fields_names_them() -> None:
    with pytest.raises(InvalidSpecError, match="postgres"):
        parse_spec(
            {"image": "x", "auth": MINIMAL_SPEC["auth"], "connectionsService": {"address": "a"}}
        )


def test_the_production_sample_is_valid() -> None:
    spec = parse_spec(PRODUCTION_SPEC)
    assert spec.redis.external is not None
    assert spec.auth.algorithms == ["RS256"]


@pytest.mark.parametrize("name", ["chat", "a", "team-chat-2", "x" * 40])
def test_cluster_names_that_leave_room_for_child_suffixes_pass(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["x" * 41, "2chat", "chat-", "Chat", "chat.apps"])
def test_cluster_names_that_would_break_child_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpecError):
        check_name(name)


def test_every_example_is_a_valid_spec() -> None:
    found = 0
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "MessagingCluster":
                parse_spec(doc["spec"])
                check_name(doc["metadata"]["name"])
                found += 1
    assert found >= 3


def test_object_defaults_are_complete_where_a_cel_rule_reads_them() -> None:
    """The API server checks a default against the rules without filling nested defaults."""
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == {"min": 2, "max": 10}
    assert spec["drain"]["default"] == {
        "windowSeconds": 10,
        "shutdownDeadlineSeconds": 25,
        "preStopSleepSeconds": 5,
    }
