"""Fixtures shared by every test module live in tests/support; they are registered here."""

import pytest

# The support modules import each other; rewrite their asserts whichever is imported first.
pytest.register_assert_rewrite("tests.support")

pytest_plugins: list[str] = [
    "tests.support.k8s",
    "tests.support.pg_replica",
    "tests.support.redis_cluster",
    "tests.support.replicas",
    "tests.support.fixtures",
    "tests.support.service",
]
