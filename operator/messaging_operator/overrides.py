"""A strategic-merge patch for pod templates, the way `kubectl patch --type strategic` merges them.

`spec.override.podTemplate` lets a platform team add what the spec has no field for (node
selectors, tolerations, sidecars, extra env) without forking the operator, as the RabbitMQ
operator's `override` does. Only the pod template's list merge keys are known here; a list without
one is replaced whole, which is also what the API server does for such lists.
"""

from __future__ import annotations

import copy
from typing import Any

from messaging_operator.errors import InvalidSpecError

# patchMergeKey of every list in a PodTemplateSpec that is merged rather than replaced.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}

_DIRECTIVE = "$patch"


def strategic_merge(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return `original` with `patch` merged in; neither argument is modified."""
    return _merge_maps(copy.deepcopy(original), patch, path="override.podTemplate")


def _merge_maps(target: dict[str, Any], patch: dict[str, Any], *, path: str) -> dict[str, Any]:
    directive = patch.get(_DIRECTIVE)
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != _DIRECTIVE}
    if directive is not None:
        raise InvalidSpecError(f"{path}: unsupported $patch directive {directive!r} on a map")
    for key, value in patch.items():
        where = f"{path}.{key}"
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            if current is None:
                current = {}
            elif not isinstance(current, dict):
                raise InvalidSpecError(
                    f"{where}: cannot merge a map into a {type(current).__name__}"
                )
            target[key] = _merge_maps(current, value, path=where)
        elif key in MERGE_KEYS and not isinstance(value, list):
            raise InvalidSpecError(f"{where}: must be a list")
        elif isinstance(value, list) and key in MERGE_KEYS:
            current_list = target.get(key) or []
            if not isinstance(current_list, list):
                raise InvalidSpecError(
                    f"{where}: cannot merge a list into a {type(current_list).__name__}"
                )
            target[key] = _merge_lists(current_list, value, merge_key=MERGE_KEYS[key], path=where)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _merge_lists(target: list[Any], patch: list[Any], *, merge_key: str, path: str) -> list[Any]:
    merged = list(target)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise InvalidSpecError(f"{path}: every item needs its merge key {merge_key!r}")
        position = next(
            (i for i, existing in enumerate(merged) if existing.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get(_DIRECTIVE) == "delete":
            if position is not None:
                del merged[position]
        elif position is None:
            merged.append(_merge_maps({}, item, path=f"{path}[{item[merge_key]}]"))
        else:
            merged[position] = _merge_maps(
                merged[position], item, path=f"{path}[{item[merge_key]}]"
            )
    return merged
