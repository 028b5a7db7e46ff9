"""Every CRD field and chart value is described, and the generated reference pages are current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "messagingclusters.messaging.platform.io.yaml"
SCHEMA = ROOT / "charts" / "messaging-operator" / "values.schema.json"


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing = []
    for key, sub in (node.get("properties") or {}).items():
        if not sub.get("description"):
            missing.append(f"{path}.{key}")
        missing += _undescribed(sub, f"{path}.{key}")
        if isinstance(sub.get("items"), dict):
            missing += _undescribed(sub["items"], f"{path}.{key}[]")
    return missing


def test_every_field_of_the_crd_has_a_description() -> None:
    [version] = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    assert _undescribed(root["spec"], "spec") + _undescribed(root["status"], "status") == []


def test_every_chart_value_has_a_description_in_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert len(schema["properties"]) > 20
    assert _undescribed(schema, "") == []


def test_the_generated_reference_pages_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen-reference.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "messagingcluster.md").read_text()
    assert "| `spec.replicas.max` |" in page
