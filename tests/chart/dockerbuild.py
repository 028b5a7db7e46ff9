"""Replays the builder stage of the Dockerfile without a Docker engine.

There is no Docker here, so the image cannot be built; what can be checked is that the build
context the .dockerignore lets through, copied by the builder stage's COPY instructions and
installed by its own RUN commands, gives a virtualenv in which every command of the image works.
Reading the instructions from the Dockerfile (instead of repeating them in the test) means a
COPY that forgets a file the install needs, or a changed pip command, fails the test.

Only what our Dockerfile uses is understood: FROM, ARG, ENV (KEY=VALUE form), WORKDIR, COPY
(without --from in the replayed stage), RUN (shell form, --mount flags ignored), USER, EXPOSE,
ENTRYPOINT and CMD (exec form). Anything else is an error rather than silently skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KNOWN = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        """The last ENTRYPOINT/CMD, which must be in exec (JSON) form."""
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        value = json.loads(found[-1])
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), found[-1]
        return value

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The stage's ENV applied over `base` (`$VAR` expanded as Docker does)."""
        values = dict(base)
        for arguments in self.all("ENV"):
            values.update(env_items(arguments, values))
        return values


def env_items(arguments: str, current: Mapping[str, str]) -> dict[str, str]:
    values = {}
    for item in shlex.split(arguments):
        key, sep, value = item.partition("=")
        assert sep, f"ENV needs KEY=VALUE: {arguments}"
        values[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: current.get(m.group(1), ""), value)
    return values


def _logical_lines(text: str) -> Iterator[str]:
    """Joins backslash continuations; comment lines inside a continuation are dropped, as
    Docker does."""
    current: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        line = " ".join(part for part in current if part)
        current = []
        if line:
            yield line
    if current:
        yield " ".join(current)


def parse_dockerfile(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise ValueError(f"dockerbuild does not understand {keyword}: {line}")
        if keyword == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            parts = arguments.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stage_name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=stage_name))
            continue
        assert stages, f"{keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


# --- .dockerignore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    regex: re.Pattern[str]
    negated: bool
    pattern: str


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher semantics: `*` and `?` stay within one path element, `**` spans any
    number of them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def read_dockerignore(path: Path) -> list[IgnoreRule]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negated else line).lstrip("/")
        rules.append(IgnoreRule(_pattern_regex(pattern), negated, pattern))
    return rules


def excluded(relative: str, rules: list[IgnoreRule]) -> bool:
    """A path is excluded when the last rule matching it, or one of its parent directories,
    is not a negation."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for rule in rules:
        if any(rule.regex.fullmatch(c) for c in candidates):
            verdict = not rule.negated
    return verdict


def build_context(root: Path, rules: list[IgnoreRule]) -> list[str]:
    """The files `docker build` would send, relative to root. Directories that are excluded and
    that no negation reaches into are not descended (the same pruning Docker does)."""
    negations = [r.pattern for r in rules if r.negated]
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        kept = []
        for sub in subdirs:
            relative = prefix + sub
            reachable = any(n == relative or n.startswith(relative + "/") for n in negations)
            if not excluded(relative, rules) or reachable:
                kept.append(sub)
        subdirs[:] = kept
        files.extend(prefix + n for n in names if not excluded(prefix + n, rules))
    return sorted(files)


# --- replaying the builder stage ----------------------------------------------------------------


def _copy(context_root: Path, context: list[str], arguments: str, workdir: Path) -> None:
    words = shlex.split(arguments)
    assert not any(w.startswith("--") for w in words), f"unsupported COPY flags: {arguments}"
    *sources, destination = words
    target = workdir / destination
    for written in sources:
        source = written.rstrip("/")
        matched = [f for f in context if f == source or f.startswith(source + "/")]
        assert matched, f"COPY {source}: not in the build context (.dockerignore?)"
        for relative in matched:
            if relative == source:  # a single file into a directory (`./`) or onto a name
                dest = target / Path(source).name if destination.endswith("/") else target
            else:  # a directory's contents into the destination directory
                dest = target / relative[len(source) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context_root / relative, dest)


def replay_stage(
    stage: Stage,
    *,
    context_root: Path,
    context: list[str],
    sandbox: Path,
    path_map: Mapping[str, Path],
    env: Mapping[str, str],
    log: Path,
) -> None:
    """Runs the stage's COPY and RUN instructions in order, with WORKDIR and ENV honoured.
    Absolute paths of the image named in path_map are replaced by directories on this machine;
    `sandbox` stands for the image's root for every other WORKDIR."""
    workdir = sandbox
    environment = dict(env)

    def local(text: str) -> str:
        for image_path, here in path_map.items():
            text = text.replace(image_path, str(here))
        return text

    with log.open("a") as sink:
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = sandbox / instruction.arguments.lstrip("/")
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "ENV":
                items = env_items(instruction.arguments, environment)
                environment.update({k: local(v) for k, v in items.items()})
            elif instruction.keyword == "COPY":
                _copy(context_root, context, instruction.arguments, workdir)
            elif instruction.keyword == "RUN":
                command = re.sub(r"^(--\S+\s+)+", "", instruction.arguments)
                sink.write(f"\n$ {local(command)}\n")
                sink.flush()
                result = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", local(command)],
                    cwd=workdir,
                    env=environment,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=600,
                    check=False,
                )
                assert result.returncode == 0, (
                    f"RUN {command} exited {result.returncode}; see {log}"
                )
