"""Markers of the chart and image tests."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: builds a virtualenv from PyPI (about a minute with a warm pip cache)"
    )
