"""Fixtures shared by every test module live in tests/support; they are registered here."""

pytest_plugins: list[str] = [
    "tests.support.k8s",
    "tests.support.servers",
    "tests.support.service",
]
