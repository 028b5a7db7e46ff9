"""The container image, as far as it can be checked without a Docker engine.

The builder stage of the Dockerfile is replayed on this machine (tests/chart/dockerbuild.py):
its COPY instructions read the build context the .dockerignore lets through, its RUN commands
create the virtualenv and run the same `pip install -c constraints.txt .`. Then the image's
commands run from that virtualenv with the final stage's environment, outside the repository,
the way a container would run them: `messaging --help`, `messaging migrate`, `messaging serve`
(on the embedded SQLite default, answering /healthz) and `messaging operator --help`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.dockerbuild import (
    Stage,
    build_context,
    parse_dockerfile,
    read_dockerignore,
    replay_stage,
)
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_IN_IMAGE = "/opt/messaging"
# The image fixture builds a virtualenv from PyPI (a minute): under pytest-xdist
# (`--dist loadgroup`) the module stays on one worker, so it is built once.
pytestmark = pytest.mark.xdist_group("chart-image")


@dataclass(frozen=True)
class Image:
    """The replayed image: its virtualenv here, and the environment its containers start with."""

    venv: Path
    env: dict[str, str]
    final: Stage
    workdir: Path

    def run(
        self, *args: str, cwd: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.entrypoint(), *args],
            cwd=cwd or self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def entrypoint(self) -> list[str]:
        """ENTRYPOINT resolved on the image's PATH (here: the replayed virtualenv's bin)."""
        command, *rest = self.final.exec_form("ENTRYPOINT")
        return [str(self.venv / "bin" / command), *rest]


def stages() -> tuple[Stage, Stage]:
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    assert len(parsed) == 2, "a builder stage and a final stage"
    return parsed[0], parsed[1]


def container_env(final: Stage, venv: Path) -> dict[str, str]:
    """What a container of the image starts with: no MESSAGING_* from this machine, the final
    stage's ENV, the image's virtualenv standing for /opt/messaging."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    base.pop("VIRTUAL_ENV", None)
    base.pop("PYTHONPATH", None)
    env = final.env(base)
    return {k: v.replace(VENV_IN_IMAGE, str(venv)) for k, v in env.items()}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    builder, final = stages()
    work = tmp_path_factory.mktemp("image")
    sandbox, venv = work / "root", work / "venv"
    tools = work / "tools"
    tools.mkdir()
    # `python` in the builder is the base image's interpreter: here, this interpreter's base
    # installation (not the repository's .venv, so nothing of it leaks into the new one).
    (tools / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    build_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")} | {
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"
    }
    rules = read_dockerignore(DOCKERIGNORE)
    log = work / "build.log"
    started = time.monotonic()
    replay_stage(
        builder,
        context_root=ROOT,
        context=build_context(ROOT, rules),
        sandbox=sandbox,
        path_map={VENV_IN_IMAGE: venv},
        env=build_env,
        log=log,
    )
    print(f"\nreplayed the builder stage in {time.monotonic() - started:.0f}s (log: {log})")
    workdir = work / "workdir"  # the final stage's WORKDIR: empty, writable
    workdir.mkdir()
    yield Image(venv=venv, env=container_env(final, venv), final=final, workdir=workdir)


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    context = build_context(ROOT, read_dockerignore(DOCKERIGNORE))
    assert {"pyproject.toml", "constraints.txt", "service/messaging/cli.py"} <= set(context)
    assert "operator/messaging_operator/run.py" in context
    assert "service/messaging/migrations/env.py" in context
    leaked = [
        f
        for f in context
        if f.split("/")[0] in {".venv", ".git", "tests", "bench", "charts", ".ci", "hack"}
        or "__pycache__" in f
        or f.endswith((".pyc", ".db"))
    ]
    assert leaked == []


def test_the_final_stage_runs_messaging_as_a_numeric_non_root_user() -> None:
    builder, final = stages()
    assert final.base == builder.base, "the venv's interpreter must be the same in both stages"
    assert final.base.startswith("python:3.11-slim")
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "Kubernetes checks runAsNonRoot only on a numeric USER"
    assert not gid or gid.isdigit()
    assert final.exec_form("ENTRYPOINT") == ["messaging"]
    assert final.exec_form("CMD") == ["serve"]
    assert set(" ".join(final.all("EXPOSE")).split()) == {"8000", "9090", "50051"}
    copies = final.all("COPY")
    assert copies == [f"--from=builder {VENV_IN_IMAGE} {VENV_IN_IMAGE}"], "only the venv"
    installs = [r for r in final.all("RUN") if "apt-get" in r or "pip " in r]
    assert installs == [], "no package installs (so no build tools) in the final stage"


@pytest.mark.slow
def test_the_image_virtualenv_holds_an_installed_copy_not_the_source_tree(image: Image) -> None:
    python = image.venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", "import messaging, messaging_operator; "
         "print(messaging.__file__); print(messaging_operator.__file__)"],
        cwd=image.workdir, env=image.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    for line in result.stdout.split():
        assert Path(line).is_relative_to(image.venv), line
    pth = image.venv.glob("lib/python*/site-packages/*.pth")
    editable = [p.name for p in pth if str(ROOT) in p.read_text()]
    assert editable == [], "an editable install points back into the repository"


@pytest.mark.slow
def test_messaging_help_lists_the_image_commands(image: Image) -> None:
    result = image.run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "operator", "token"):
        assert command in result.stdout


@pytest.mark.slow
def test_messaging_operator_help_shows_the_flags_the_chart_sets(image: Image) -> None:
    result = image.run("operator", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--all-namespaces", "--namespace", "--metrics-port", "--liveness"):
        assert flag in result.stdout


@pytest.mark.slow
def test_messaging_migrate_creates_the_schema_on_the_default_database(
    image: Image, tmp_path: Path
) -> None:
    termination = tmp_path / "termination-log"
    env = {**image.env, "MESSAGING_TERMINATION_MESSAGE_PATH": str(termination)}
    result = subprocess.run(
        [*image.entrypoint(), "migrate"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    revision = result.stdout.strip().splitlines()[-1].removeprefix("schema_version=")
    assert revision and revision != result.stdout.strip()
    assert termination.read_text() == revision
    assert (tmp_path / "messaging.db").stat().st_size > 0


@pytest.mark.slow
def test_messaging_serve_answers_healthz_with_the_image_defaults(
    image: Image, tmp_path: Path
) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **image.env,
        "MESSAGING_HTTP_PORT": str(http_port),
        "MESSAGING_GRPC_PORT": str(grpc_port),
        "MESSAGING_METRICS_PORT": str(free_port()),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*image.entrypoint(), *image.final.exec_form("CMD")],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            assert process.poll() is None, f"serve exited:\n{log.read_text()}"
            try:
                url = f"http://127.0.0.1:{http_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200, f"no /healthz within 60s:\n{log.read_text()}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
