"""``messaging serve`` under cProfile with a CPU clock, for ``bench.ab --cprofile``.

    python -m bench.profiled_serve OUT.prof

SIGUSR1 starts profiling, SIGUSR2 stops it and writes OUT.prof (pstats). A CPU clock
(``time.process_time``) rather than the wall clock: on a shared machine a process waits for a
core, and wall-clock profiles charge that wait to whatever line it was on.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType

from messaging.cli import main


def run(out: str) -> None:
    profile = cProfile.Profile(time.process_time)

    def start(signum: int, frame: FrameType | None) -> None:
        profile.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["messaging", "serve"]
    main()


if __name__ == "__main__":
    run(sys.argv[1])
