"""The stand-in Connections service reads its graph from a YAML file of user pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from messaging.dev_connections import ConnectionGraph


def test_pairs_from_a_yaml_file_are_connected_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "pairs.yaml"
    path.write_text("connections:\n  - [alice, bob]\n  - [bob, carol]\n")
    graph = ConnectionGraph.from_file(path)
    assert graph.is_connected("alice", "bob")
    assert graph.is_connected("bob", "alice")
    assert graph.is_connected("carol", "bob")
    assert not graph.is_connected("alice", "carol")
    assert not graph.is_connected("alice", "alice")


def test_all_connected_connects_everyone_but_yourself(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text("allConnected: true\n")
    graph = ConnectionGraph.from_file(path)
    assert graph.is_connected("anyone", "else")
    assert not graph.is_connected("anyone", "anyone")


@pytest.mark.parametrize(
    "text", ["- alice\n- bob\n", "connections:\n  - [alice]\n", "connections:\n  - [alice, 7]\n"]
)
def test_a_malformed_file_is_refused_with_its_name(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        ConnectionGraph.from_file(path)
