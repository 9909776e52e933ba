"""``make conformance`` (bench/conformance_run.py): a gateway process on its shipped defaults,
the suite in gateway mode against it, the summary and the exit status. The whole run takes
minutes of real timers; here two quick cases show the machinery works end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "conformance_run", ROOT / "bench" / "conformance_run.py"
)
assert _spec is not None and _spec.loader is not None
conformance_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conformance_run)


def case(case_id: str, verdict: str, applicable: bool = True) -> dict[str, Any]:
    return {"id": case_id, "verdict": verdict, "reason": "why", "applicable": applicable}


def test_every_applicable_case_must_pass() -> None:
    results = {
        "totals": {"pass": 1, "skip": 2, "total": 3},
        "cases": [case("A", "pass"), case("B", "skip", applicable=False), case("C", "pass")],
        "state_log": [],
        "duration": 1.0,
    }
    assert conformance_run.summarize(results, 2.0)["ok"]
    results["cases"][2] = case("C", "skip")  # an applicable case skipped is not passed
    summary = conformance_run.summarize(results, 2.0)
    assert not summary["ok"] and summary["not_passed"] == [
        {"id": "C", "verdict": "skip", "reason": "why"}
    ]
    results["cases"] = [case("B", "skip", applicable=False)]  # nothing ran: not a pass either
    assert not conformance_run.summarize(results, 2.0)["ok"]


def test_the_gateway_config_sets_only_ports_data_and_the_uplink(tmp_path: Path) -> None:
    from gateway.settings import load_config
    from gateway.settings.sections import Config

    text = conformance_run.gateway_config(25060, 25070, (26000, 26399), tmp_path, "2022")
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    config = load_config(str(path))
    shipped = Config()
    assert config.keepalive == shipped.keepalive and config.registrar == shipped.registrar
    assert config.downlink == shipped.downlink and config.auth == shipped.auth
    (upper,) = config.uplink.platforms
    assert (upper.keepalive_interval, upper.register_expires, upper.retry_interval) == (
        60.0,
        3600,
        60.0,
    )
    assert (config.sip.port, upper.port, config.media.port_min) == (25060, 25070, 26000)


@pytest.mark.timeout(120)
def test_make_conformance_runs_the_gateway_process_and_summarizes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "conformance_run.py"), "--out", str(out),
         "--", "-k", "A-CAT-01 or A-DATE-01"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2/2 applicable cases passed" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["totals"]["pass"] == 2
    for name in ("report.html", "results.json", "junit.xml", "gateway.log", "gateway.toml"):
        assert (out / name).exists(), name
    assert "gateway.started" in (out / "gateway.log").read_text()
