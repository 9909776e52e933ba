"""The gateway under cProfile for one window of ``bench/preview.py`` (``--profile N``).

Run by the bench: ``python bench/_preview_profiled.py OUT.prof run --config gateway.toml``.
The gateway's own CLI runs in this process; SIGUSR1 starts profiling its main thread, SIGUSR2
stops it and writes the statistics to OUT.prof, so start-up, the viewers' set-up and shutdown
are left out of the figures.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from typing import Any

PROFILE = cProfile.Profile()


def main() -> None:
    out = sys.argv[1]

    def start(signum: int, frame: Any) -> None:
        PROFILE.enable()

    def stop(signum: int, frame: Any) -> None:
        PROFILE.disable()
        PROFILE.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["gb28181-gateway", *sys.argv[2:]]
    runpy.run_module("gateway.cli", run_name="__main__")


if __name__ == "__main__":
    main()
