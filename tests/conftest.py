"""Fixtures shared by every test module live in tests/support; they are registered here."""

pytest_plugins: list[str] = []
