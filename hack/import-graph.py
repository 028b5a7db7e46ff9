"""Print the service's import graph: each module's floor, its layer, its contracts, its imports.

Run from the repository root: ``.venv/bin/python hack/import-graph.py``. A module's *floor* is the
length of the longest chain of imports below it inside ``messaging`` (0: it imports nothing of
ours), so a module only ever imports modules on lower floors (the graph has no cycles). Its *layer*
is its row in the ``service-layers`` contract of ``.importlinter`` (0 the top), and *contracts*
are every contract naming it or a package above it. Modules in no contract are listed last:
import-linter would not notice them breaking the layering. Uses grimp, import-linter's graph.
"""

from __future__ import annotations

import configparser
import sys
from functools import cache
from pathlib import Path

import grimp

ROOT = "messaging"
# Generated code and migrations sit outside the layering on purpose.
SKIP = ("messaging.proto", "messaging.migrations")


def _listed(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def contracts(path: Path) -> dict[str, dict[str, list[str]]]:
    """Each contract's id -> its module lists (layers split on ``|``)."""
    parser = configparser.ConfigParser()
    parser.read(path)
    found: dict[str, dict[str, list[str]]] = {}
    for section in parser.sections():
        if not section.startswith("importlinter:contract:"):
            continue
        body = parser[section]
        lists: dict[str, list[str]] = {}
        for key in ("layers", "source_modules", "forbidden_modules", "modules"):
            if key in body:
                lists[key] = _listed(body[key])
        # Layers named relative to their containers (``containers = messaging``: ``cli``).
        containers = _listed(body.get("containers", ""))
        if containers and "layers" in lists:
            lists["layers"] = [
                " | ".join(f"{c}.{name.strip()}" for c in containers for name in row.split("|"))
                for row in lists["layers"]
            ]
        found[section.removeprefix("importlinter:contract:")] = lists
    return found


def covers(listed: str, module: str) -> bool:
    return module == listed or module.startswith(listed + ".")


def main() -> int:
    graph = grimp.build_graph(ROOT, include_external_packages=False)
    modules = sorted(m for m in graph.modules if m != ROOT and not any(covers(s, m) for s in SKIP))

    @cache
    def floor(module: str) -> int:
        below = [m for m in graph.find_modules_directly_imported_by(module) if m in modules]
        return 1 + max(map(floor, below)) if below else 0

    found = contracts(Path(".importlinter"))
    layers = found.get("service-layers", {}).get("layers", [])
    layer_of: dict[str, int] = {}
    for index, row in enumerate(layers):
        for name in row.split("|"):
            for module in modules:
                if covers(name.strip(), module):
                    layer_of.setdefault(module, index)
    uncovered = []
    rows = []
    for module in modules:
        names = [
            cid
            for cid, lists in found.items()
            if any(
                covers(n.strip(), module)
                for v in lists.values()
                for row in v
                for n in row.split("|")
            )
        ]
        if not names:
            uncovered.append(module)
        imports = sorted(
            m.removeprefix(ROOT + ".")
            for m in graph.find_modules_directly_imported_by(module)
            if m in modules
        )
        rows.append((floor(module), module, layer_of.get(module), names, imports))
    top = max(r[0] for r in rows)
    print(f"{len(modules)} modules of {ROOT} on {top + 1} floors, {len(layers)} layers")
    for level in range(top, -1, -1):
        print(f"\nfloor {level}")
        for _, module, layer, names, imports in (r for r in rows if r[0] == level):
            where = "-" if layer is None else str(layer)
            print(f"  {module.removeprefix(ROOT + '.'):28} layer {where:>2}  [{', '.join(names)}]")
            if imports:
                print(f"      -> {' '.join(imports)}")
    print(f"\nin no contract: {', '.join(uncovered) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
