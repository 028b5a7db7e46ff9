"""The Grafana dashboard reads well: units, a cluster picker, a description on every panel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "charts" / "messaging-operator" / "files"
    / "grafana-dashboard.json"
)  # fmt: skip


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_every_panel_has_a_description_and_a_unit() -> None:
    for panel in _dashboard()["panels"]:
        assert panel.get("description"), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_panels_mixing_seconds_with_rates_put_the_seconds_on_their_own_axis() -> None:
    for panel in _dashboard()["panels"]:
        targets = panel.get("targets", [])
        seconds = [
            t["refId"] for t in targets if "_seconds" in t["expr"] and "quantile" in t["expr"]
        ]
        if not seconds or panel["fieldConfig"]["defaults"]["unit"] == "s":
            continue
        overridden = {
            o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"].get("overrides", [])
            if o["matcher"]["id"] == "byFrameRefID"
        }
        for ref in seconds:
            assert overridden.get(ref, {}).get("unit") == "s", (panel["title"], ref)
            assert overridden[ref].get("custom.axisPlacement") == "right", (panel["title"], ref)


def test_one_messaging_cluster_can_be_picked_and_every_query_follows_it() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"namespace", "cluster", "pod"} <= set(variables)
    assert variables["cluster"]["allValue"] == ".*"  # series without the label still show
    assert 'cluster=~"$cluster"' in variables["pod"]["query"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert 'cluster=~"$cluster"' in target["expr"], (panel["title"], target["expr"])
