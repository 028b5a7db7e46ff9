"""Installing the Node.js reference's dependencies is safe from several processes at once.

``npm ci`` first deletes ``node_modules``: two at once (two xdist workers, or a test and the
``bench.ab`` it runs) left a reference starting from a half-removed tree, and a CI run's reference
servers exited with ``@redis/client``'s commands undefined.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import node_reference


def test_installs_racing_each_other_leave_a_tree_the_reference_can_load(tmp_path: Path) -> None:
    """Each racer installs and at once loads what the reference needs, as a fixture does."""
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("package.json", "package-lock.json", "server.js"):
        shutil.copy(node_reference.REFERENCE_DIR / name, reference / name)
    node = shutil.which("node")
    assert node is not None
    load = ";".join(
        f"require({p!r})" for p in ("socket.io", "@socket.io/redis-adapter", "redis", "pg")
    )

    def install_then_load(_: int) -> int:
        node_reference.npm_ci(reference)
        done = subprocess.run([node, "-e", load], check=False, cwd=reference, capture_output=True)
        return done.returncode

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(install_then_load, range(3))) == [0, 0, 0]
