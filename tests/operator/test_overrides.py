"""The pod-template override merges like `kubectl patch --type strategic`."""

from __future__ import annotations

import pytest

from messaging_operator.errors import InvalidSpecError
from messaging_operator.overrides import strategic_merge

TEMPLATE = {
    "metadata": {"labels": {"app": "m"}, "annotations": {"a": "1"}},
    "spec": {
        "containers": [
            {
                "name": "messaging",
                "image": "img",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"name": "http", "containerPort": 8000}],
            }
        ],
        "tolerations": [{"key": "old"}],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    },
}


def test_maps_merge_and_null_removes_a_key() -> None:
    merged = strategic_merge(
        TEMPLATE,
        {"metadata": {"annotations": {"b": "2", "a": None}}, "spec": {"hostNetwork": False}},
    )
    assert merged["metadata"]["annotations"] == {"b": "2"}
    assert merged["metadata"]["labels"] == {"app": "m"}
    assert merged["spec"]["hostNetwork"] is False


def test_lists_with_a_merge_key_merge_item_by_item() -> None:
    merged = strategic_merge(
        TEMPLATE,
        {
            "spec": {
                "containers": [
                    {
                        "name": "messaging",
                        "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                    },
                    {"name": "sidecar", "image": "proxy"},
                ]
            }
        },
    )
    containers = merged["spec"]["containers"]
    assert [c["name"] for c in containers] == ["messaging", "sidecar"]
    assert containers[0]["image"] == "img"
    assert containers[0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "two"},
        {"name": "C", "value": "3"},
    ]


def test_lists_without_a_merge_key_are_replaced() -> None:
    merged = strategic_merge(TEMPLATE, {"spec": {"tolerations": [{"key": "new"}]}})
    assert merged["spec"]["tolerations"] == [{"key": "new"}]


def test_delete_and_replace_directives() -> None:
    merged = strategic_merge(
        TEMPLATE,
        {
            "spec": {
                "volumes": [{"name": "tmp", "$patch": "delete"}],
                "containers": [
                    {"name": "messaging", "ports": [{"containerPort": 8000, "$patch": "delete"}]}
                ],
            },
            "metadata": {"labels": {"$patch": "replace", "only": "this"}},
        },
    )
    assert merged["spec"]["volumes"] == []
    assert merged["spec"]["containers"][0]["ports"] == []
    assert merged["metadata"]["labels"] == {"only": "this"}


def test_the_original_is_never_modified() -> None:
    before = repr(TEMPLATE)
    strategic_merge(TEMPLATE, {"spec": {"containers": [{"name": "messaging", "image": "x"}]}})
    assert repr(TEMPLATE) == before


@pytest.mark.parametrize(
    "patch",
    [
        {"spec": {"containers": {"name": "messaging"}}},
        {"spec": {"containers": [{"image": "no-name"}]}},
        {"metadata": {"labels": {"$patch": "merge-ish"}}},
        {"spec": {"containers": [{"name": "messaging", "env": "A=1"}]}},
    ],
)
def test_a_patch_that_does_not_fit_the_template_is_an_invalid_spec(
    patch: dict[str, object],
) -> None:
    with pytest.raises(InvalidSpecError):
        strategic_merge(TEMPLATE, patch)
