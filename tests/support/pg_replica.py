"""A real PostgreSQL streaming replica of the test primary, for the read-replica tests.

Made the way an operator makes one: ``pg_basebackup -R`` (it writes ``standby.signal`` and
``primary_conninfo``) with a replication slot, so the primary keeps the WAL a stopped replica
still needs. Started on a private port as a hot standby; the fixture returns once it streams and
stops it (and drops its slot) at the end of the session. The primary needs nothing special:
PostgreSQL's defaults are ``wal_level=replica`` and ten WAL senders, and ``initdb -A trust``
writes pg_hba's loopback ``replication`` entries.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import PostgresServer, as_user


@dataclass(frozen=True)
class PostgresReplica:
    """The hot standby: its own port, the same databases as the primary (physical copy)."""

    primary: PostgresServer
    server: PostgresServer  # its pg_ctl, psql and dsn

    @property
    def port(self) -> int:
        return self.server.port

    def dsn(self, database: str) -> str:
        return self.server.dsn(database)

    def psql(self, database: str, sql: str) -> str:
        return self.server.psql(database, sql)

    def pause_replay(self) -> None:
        """Stop applying WAL (it still streams): new commits stay invisible here."""
        self.psql("postgres", "SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.psql("postgres", "SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.psql("postgres", "SELECT status FROM pg_stat_wal_receiver").strip()
            except subprocess.CalledProcessError:
                status = ""  # still starting up
            if status == "streaming":
                return
            time.sleep(0.1)
        raise TimeoutError(f"the replica did not start streaming within {timeout}s")

    def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until the replica has replayed everything the primary wrote before this call."""
        target = self.primary.psql("postgres", "SELECT pg_current_wal_insert_lsn()").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = self.psql(
                "postgres", f"SELECT pg_last_wal_replay_lsn() < '{target}'::pg_lsn"
            ).strip()
            if behind == "f":
                return
            time.sleep(0.05)
        raise TimeoutError(f"the replica did not replay up to {target} within {timeout}s")


@pytest.fixture(scope="session")
def postgres_replica(postgres_server: PostgresServer) -> Iterator[PostgresReplica]:
    root = Path(tempfile.mkdtemp(prefix="messaging-pg-replica-"))
    run_as = "postgres" if os.geteuid() == 0 else None
    data = root / "pgdata"  # where PostgresServer(root) keeps its cluster
    data.mkdir()
    if run_as is not None:
        root.chmod(0o755)  # the postgres user must reach its directory
        shutil.chown(data, run_as)
    data.chmod(0o700)
    slot = f"test_replica_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [str(postgres_server.bin_dir / "pg_basebackup"), "-h", postgres_server.host,
         "-p", str(postgres_server.port), "-U", postgres_server.user, "-D", str(data),
         "-R", "-X", "stream", "-C", "-S", slot, "-c", "fast", "--no-sync"],
        check=True, capture_output=True, **as_user(run_as),
    )  # fmt: skip
    # A hot standby needs max_connections at least the primary's.
    server = PostgresServer(
        root,
        user=postgres_server.user,
        settings={
            "fsync": "off",
            "max_connections": "300",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "cluster_name": "messaging-test-replica",
        },
    )
    replica = PostgresReplica(primary=postgres_server, server=server)

    def stop() -> None:
        server.kill()
        # The slot would hold WAL on the primary for ever; its walsender exits shortly after.
        for _ in range(50):
            try:
                postgres_server.psql(
                    "postgres",
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    f"WHERE slot_name = '{slot}'",
                )
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    try:
        server.start()
        replica.wait_streaming()
        yield replica
    finally:
        stop()
        atexit.unregister(stop)
