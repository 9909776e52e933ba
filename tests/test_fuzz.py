"""The short wire-fuzzing run (``bench/fuzz.py``; ``make fuzz`` is the long one): about 40
seconds of mutated SIP over UDP and TCP at a gateway process, honest devices registering and
keeping alive beside it. Passes when the fuzzer reports no finding: the gateway stayed up,
logged nothing at error level, answered every honest request, and its RSS did not keep
growing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_a_short_fuzzing_run_finds_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--seconds", "40"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert run.stdout, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["findings"] == [], (
        report["findings"],
        f"seed {report['seed']}",
        run.stderr[-2000:],
    )
    assert run.returncode == 0
    # The run did what it says: traffic of every kind went out and honest devices were served.
    assert report["fuzzer"]["udp_sent"] > 5_000 and report["fuzzer"]["tcp_sent"] > 500
    assert len(report["fuzzer"]["kinds"]) >= 20
    assert report["honest"]["keepalives"] > 100
