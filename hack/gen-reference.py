#!/usr/bin/env python3
"""Generated reference documentation, and `--check` that it is current (hack/test.sh runs it).

- charts/messaging-operator/values.schema.json: every property's `description` is the comment
  above its key in values.yaml (the one place a value is explained), or, for a key without a
  comment of its own, its parent's with the key named; a few keys helm defines get theirs here.
- docs/messagingcluster.md: the "Field reference" section, one row per field of the CRD's schema
  (path, type, default, description), between the GENERATED markers; the prose around it stays
  hand-written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "charts" / "messaging-operator" / "values.yaml"
SCHEMA = ROOT / "charts" / "messaging-operator" / "values.schema.json"
CRD = ROOT / "crds" / "messagingclusters.messaging.platform.io.yaml"
PAGE = ROOT / "docs" / "messagingcluster.md"
BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (hack/gen-reference.py) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"
# Keys with no line in values.yaml.
EXTRA = {"global": "Helm's global values, shared with parent charts (unused by this chart)."}
KEY = re.compile(r"^(\s*)([A-Za-z][\w.-]*):")


def values_comments() -> dict[str, str]:
    """`a.b.c` -> the comment block right above that key in values.yaml."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in VALUES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if not match:
            comment = []
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match.group(2)])
        if comment:
            found[path] = " ".join(comment)
        comment = []
        value = line.split(":", 1)[1].strip()
        if not value or value.startswith("#"):
            stack.append((indent, match.group(2)))
    return found


def described_schema() -> str:
    schema = json.loads(SCHEMA.read_text())
    comments = values_comments()

    def walk(node: dict[str, Any], path: list[str]) -> None:
        for key, sub in (node.get("properties") or {}).items():
            dotted = ".".join([*path, key])
            text = comments.get(dotted) or EXTRA.get(dotted)
            if text is None:
                parent = ".".join(path)
                text = f"`{key}` of {parent}: {comments.get(parent, EXTRA.get(parent, ''))}".strip()
            sub["description"] = text
            walk(sub, [*path, key])
            if isinstance(sub.get("items"), dict):
                for item_key, item in (sub["items"].get("properties") or {}).items():
                    item["description"] = f"`{item_key}` of one entry of {dotted}: {text}"

    walk(schema, [])
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return str(kind or "any")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def field_reference() -> str:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    rows = ["| field | type | default | description |", "|---|---|---|---|"]

    def walk(node: dict[str, Any], path: str) -> None:
        required = set(node.get("required", []))
        for key, sub in (node.get("properties") or {}).items():
            field = f"{path}.{key}"
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            need = " (required)" if key in required else ""
            rows.append(
                f"| `{field}`{need} | {_type(sub)} | {_cell(default)} | "
                f"{_cell(sub.get('description', ''))} |"
            )
            walk(sub, field)
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], f"{field}[]")

    for top in ("spec", "status"):
        walk(root[top], top)
    intro = (
        f"Every field of `{version['name']}`, generated from the CRD's schema "
        "(`python3 hack/gen-reference.py`; `--check` runs in hack/test.sh). `kubectl explain "
        "messagingcluster.spec.<field>` shows the same descriptions."
    )
    return "\n".join([BEGIN, "", "## Field reference", "", intro, "", *rows, "", END])


def page() -> str:
    text = PAGE.read_text()
    section = field_reference()
    if BEGIN in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        return before + section + after
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    stale = []
    for path, text in ((SCHEMA, described_schema()), (PAGE, page())):
        if path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}: run `python3 hack/gen-reference.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
