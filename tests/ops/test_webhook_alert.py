"""The webhook backlog alert fires on a stalled dispatcher and not on a healthy one
(`promtool test rules` against the chart's rules file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def test_the_webhook_backlog_alert_fires_after_five_minutes_behind() -> None:
    checked = subprocess.run(
        ["promtool", "test", "rules", "webhook_alert_test.yaml"],
        cwd=HERE,
        check=False,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
