"""The log pipeline (``gateway.logs``): a flood of one event is cut to a burst and summarised,
peers' text is written as a short escaped excerpt, and the counters still count every event.

The unit tests run the gateway's own processor chain on a logger of their own (a fake clock,
output in a list); the last one floods a gateway in its own process with garbage datagrams.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from conformance.peers.device import SimDevice
from gateway import logs
from gateway.app import configure_logging
from gateway.metrics import Metrics
from gateway.settings import ConfigError, config_from_dict
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """The gateway's chain (JSON) on a logger writing into a buffer, with a fake clock."""

    def __init__(
        self, *, burst: int = 20, window: float = 10.0, max_chars: int = 200, level: int = 10
    ) -> None:
        self.clock = Clock()
        self.out = io.StringIO()
        self.limiter = logs.RateLimit(
            burst=burst, window=window, clock=self.clock, report=self._report
        )
        self.log: Any = structlog.wrap_logger(
            structlog.PrintLogger(self.out),
            processors=logs.processors(json=True, limiter=self.limiter, max_chars=max_chars),
            wrapper_class=structlog.make_filtering_bound_logger(level),
        )

    def _report(self, method: str, name: str, count: int, window: float) -> None:
        getattr(self.log, method)("log.suppressed", name=name, count=count, window=window)

    @property
    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


# -- the rate limit ---------------------------------------------------------------------------
def test_a_flood_of_one_event_is_cut_to_the_burst_and_summarised() -> None:
    rig = Rig(burst=20, window=10.0)
    for n in range(10_000):
        rig.log.warning("sip.rx.parse_error", peer="udp:192.0.2.7:5060", reason=f"garbage {n}")
    shown = rig.named("sip.rx.parse_error")
    assert len(shown) == 20
    assert [e["reason"] for e in shown] == [f"garbage {n}" for n in range(20)]
    assert rig.limiter.pending() == {"sip.rx.parse_error": 9_980}
    assert len(rig.lines) == 20  # nothing more until the window ends
    rig.clock.now += 10.0
    rig.log.info("device.registered", device_id="34020000001320000001")
    (summary,) = rig.named("log.suppressed")
    assert summary["name"] == "sip.rx.parse_error"
    assert summary["count"] == 9_980
    assert summary["level"] == "warning"  # as loud as what it stands for
    assert len(rig.lines) == 20 + 2
    # The summary comes before the line that noticed the window had ended.
    assert [e["event"] for e in rig.events[-2:]] == ["log.suppressed", "device.registered"]


def test_a_new_window_lets_the_event_through_again() -> None:
    rig = Rig(burst=3, window=10.0)
    for _ in range(5):
        rig.log.warning("sip.rx.parse_error")
    rig.clock.now += 10.5
    for _ in range(5):
        rig.log.warning("sip.rx.parse_error")
    events = [e["event"] for e in rig.events]
    assert events == ["sip.rx.parse_error"] * 3 + ["log.suppressed"] + ["sip.rx.parse_error"] * 3
    assert rig.named("log.suppressed")[0]["count"] == 2
    assert rig.limiter.pending() == {"sip.rx.parse_error": 2}


def test_another_event_is_unaffected_while_one_is_suppressed() -> None:
    rig = Rig(burst=5, window=10.0)
    for n in range(1_000):
        rig.log.warning("sip.rx.parse_error", n=n)
        if n % 100 == 0:
            rig.log.info("message.stray_response", n=n)
    assert len(rig.named("sip.rx.parse_error")) == 5
    assert [e["n"] for e in rig.named("message.stray_response")] == [0, 100, 200, 300, 400]
    assert rig.limiter.pending() == {"sip.rx.parse_error": 995, "message.stray_response": 5}


def test_audit_events_are_never_limited() -> None:
    """A re-registration storm after an outage: every device's line is the operator's
    history, and only an authenticated device can cause one."""
    rig = Rig(burst=5, window=10.0)
    for n in range(2_000):
        rig.log.info("device.registered", device_id=f"3402000000132{n:07d}")
        rig.log.warning("sip.rx.parse_error", n=n)
    assert len(rig.named("device.registered")) == 2_000
    assert len(rig.named("sip.rx.parse_error")) == 5
    assert rig.limiter.pending() == {"sip.rx.parse_error": 1_995}


def test_the_unlimited_events_are_configured() -> None:
    saved = structlog.get_config()
    try:
        limiter = configure_logging(config_from_dict({}))
        assert limiter.exempt == logs.AUDIT and "device.registered" in logs.AUDIT
        limiter = configure_logging(config_from_dict({"log": {"unlimited": ["x.y"]}}))
        assert limiter.exempt == frozenset(["x.y"])
        limiter = configure_logging(config_from_dict({"log": {"unlimited": []}}))
        assert limiter.exempt == frozenset()
    finally:
        structlog.configure(**saved)


def test_flush_reports_what_is_pending_at_stop() -> None:
    rig = Rig(burst=2, window=10.0)
    for _ in range(7):
        rig.log.error("store.flush_failed")
    for _ in range(3):
        rig.log.info("relay.idle")
    rig.limiter.flush()
    summaries = {e["name"]: e for e in rig.named("log.suppressed")}
    assert summaries["store.flush_failed"]["count"] == 5
    assert summaries["store.flush_failed"]["level"] == "error"
    assert summaries["relay.idle"]["count"] == 1
    assert summaries["relay.idle"]["level"] == "info"
    assert rig.limiter.pending() == {}
    rig.limiter.flush()  # nothing twice
    assert len(rig.named("log.suppressed")) == 2


def test_roll_reports_ended_windows_without_another_line() -> None:
    rig = Rig(burst=1, window=10.0)
    for _ in range(4):
        rig.log.warning("sip.rx.parse_error")
    rig.clock.now += 5
    rig.limiter.roll()
    assert rig.named("log.suppressed") == []  # the window is still open
    rig.clock.now += 5
    rig.limiter.roll()
    assert [(e["name"], e["count"]) for e in rig.named("log.suppressed")] == [
        ("sip.rx.parse_error", 3)
    ]


def test_the_limiter_remembers_a_bounded_number_of_names() -> None:
    clock = Clock()
    limiter = logs.RateLimit(
        burst=1, window=10.0, clock=clock, max_names=8, report=lambda m, n, c, w: None
    )
    passed = 0
    for n in range(1_000):
        try:
            limiter(None, "warning", {"event": f"event.{n}"})
            passed += 1
        except structlog.DropEvent:
            pass
    assert passed == 9  # eight names of their own, then one window shared by all the others
    assert limiter.pending() == {"log.other": 1_000 - 9}


def test_filtered_levels_never_reach_the_limiter() -> None:
    """``logs.configure`` filters by level in the bound logger, before any processor: a debug
    flood under ``level = "info"`` costs the limiter nothing and is not counted as dropped."""
    saved = structlog.get_config()
    out = io.StringIO()
    try:
        limiter = logs.configure(level="info", json=True, burst=1, stream=out)
        log = structlog.get_logger("tests.logs")
        for _ in range(1_000):
            log.debug("sip.keepalive")
        log.info("sip.keepalive")
        log.info("sip.keepalive")
        assert limiter.pending() == {"sip.keepalive": 1}  # the second info line, not the debugs
        assert len(out.getvalue().splitlines()) == 1
    finally:
        structlog.configure(**saved)


# -- excerpts ---------------------------------------------------------------------------------
def test_a_100kb_attacker_string_is_a_short_escaped_excerpt() -> None:
    rig = Rig(max_chars=200)
    hostile = ("\x1b[2J\x00\r\n\x9b" + "A" * 1000) * 100  # 100 KB with terminal escapes
    rig.log.warning("sip.rx.parse_error", reason=hostile, peer="udp:192.0.2.7:5060")
    (line,) = rig.lines
    event = json.loads(line)
    reason = event["reason"]
    assert len(reason) <= 250
    assert reason.startswith("\\x1b[2J\\x00\\r\\n\\x9b")  # written as repr writes them
    head, _, rest = reason.partition("…(+")
    # The marker counts exactly what was left out of what the peer sent.
    left_out = int(rest.removesuffix(")"))
    assert head.encode("ascii").decode("unicode_escape") == hostile[: len(hostile) - left_out]
    assert left_out > len(hostile) - 200
    assert reason.isprintable()
    assert len(line) < 500
    assert not any(c in line for c in "\x1b\x00\r\x9b")
    assert event["peer"] == "udp:192.0.2.7:5060"
    assert event["event"] == "sip.rx.parse_error"


def test_the_console_line_is_one_line_whatever_the_peer_wrote() -> None:
    out = io.StringIO()
    log: Any = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=logs.processors(json=False, limiter=logs.RateLimit()),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    log.warning("invite.refused", reason="x\r\n2026-01-01 [error] forged line\n" * 50)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "…(+" in text


def test_short_printable_values_are_kept_as_they_are() -> None:
    rig = Rig()
    rig.log.info(
        "device.registered",
        device_id="34020000001320000001",
        name="大门口摄像机",
        expires=3600,
        ratio=0.5,
        online=True,
        parent=None,
    )
    (event,) = rig.events
    assert event["name"] == "大门口摄像机"
    assert (event["expires"], event["ratio"], event["online"], event["parent"]) == (
        3600,
        0.5,
        True,
        None,
    )


def test_bytes_lists_dicts_and_objects_are_cut_too() -> None:
    class Peerish:
        def __repr__(self) -> str:
            return "Peerish(" + "z" * 5_000 + ")"

    rig = Rig(max_chars=50)
    rig.log.warning(
        "sip.rx.odd",
        data=b"\x00\xff" * 10_000,
        items=["\x07" * 1_000] * 1_000,
        headers={"Via\n": "v" * 1_000},
        thing=Peerish(),
        nested=[[[[["deep" * 100]]]]],
    )
    (event,) = rig.events
    assert event["data"].startswith("b'\\x00\\xff") and event["data"].endswith("bytes)")
    assert len(event["data"]) < 80
    assert len(event["items"]) == logs.MAX_ITEMS + 1
    assert event["items"][-1] == f"…(+{1_000 - logs.MAX_ITEMS} items)"
    assert all(len(i) <= 70 for i in event["items"])
    assert list(event["headers"]) == ["Via\\n"]
    assert len(event["headers"]["Via\\n"]) <= 70
    assert event["thing"].startswith("Peerish(zzz") and len(event["thing"]) <= 70
    assert len(json.dumps(event["nested"])) < 150
    assert len(rig.lines[0]) < 30_000


def test_odd_values_never_fail_the_call_site() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    rig = Rig()
    rig.log.warning("sip.rx.odd", thing=Broken(), keys={frozenset({1}): "a", (1, 2): "b"})
    (event,) = rig.events
    assert event["thing"] == "<unprintable Broken>"
    assert event["keys"] == {"frozenset({1})": "a", "(1, 2)": "b"}


def test_a_traceback_is_kept_with_its_message_cut() -> None:
    rig = Rig(max_chars=200)
    try:
        raise ValueError("bad header " + "\x1b" * 50 + "Q" * 100_000 + "\nforged\x00line")
    except ValueError:
        rig.log.exception("sip.handler_error", peer="udp:192.0.2.7:5060")
    (event,) = rig.events
    tb = event["exception"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "test_a_traceback_is_kept_with_its_message_cut" in tb
    lines = tb.split("\n")
    assert all(len(line) <= 250 for line in lines)
    assert lines[-1] == "forged\\x00line"
    assert len(tb) < 2_000


def test_an_event_name_is_kept_and_a_hostile_one_cut() -> None:
    rig = Rig(max_chars=64)
    rig.log.info("catalog.synced")
    rig.log.info("\x1b" + "n" * 10_000)
    names = [e["event"] for e in rig.events]
    assert names[0] == "catalog.synced"
    assert names[1].startswith("\\x1bnnn") and len(names[1]) < 100


def test_excerpt_counts_what_it_leaves_out() -> None:
    assert logs.excerpt("abc", 10) == "abc"
    assert logs.excerpt("a" * 15, 10) == "a" * 10 + "…(+5)"
    assert logs.excerpt("a\nb", 10) == "a\\nb"
    assert logs.excerpt("\x00" * 100, 10) == "\\x00\\x00…(+98)"


def test_log_section_keys_and_bounds() -> None:
    c = config_from_dict({}).log
    assert (c.burst, c.window, c.max_value_chars) == (20, 10.0, 200)
    c = config_from_dict({"log": {"burst": 5, "window": 60, "max_value_chars": 500}}).log
    assert (c.burst, c.window, c.max_value_chars) == (5, 60.0, 500)
    for bad in ({"burst": 0}, {"window": 0}, {"max_value_chars": 8}):
        with pytest.raises(ConfigError):
            config_from_dict({"log": bad})


# -- end to end: a gateway flooded with garbage -----------------------------------------------
class _Sink(asyncio.DatagramProtocol):
    """Sends garbage, ignores any answer."""


@pytest.mark.timeout(120)
async def test_a_garbage_flood_leaves_a_short_log_and_every_datagram_counted(
    tmp_path: Path,
) -> None:
    """2,000 garbage datagrams with terminal escapes: the gateway's log holds at most the burst
    of ``sip.rx.parse_error`` lines plus one ``log.suppressed`` line that accounts for the
    rest, and ``sip.rx.parse_error`` counts all 2,000 (today: 2,000 lines, ~700 KB)."""
    flood = 2_000
    gw = await GatewayProcess.start(tmp_path, log={"burst": 20, "window": 3600})
    loop = asyncio.get_running_loop()
    sender, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    try:
        dev = SimDevice(ep, "34020000001320000001", Peer("udp", "127.0.0.1", gw.port))
        assert (await dev.register()).status == 200
        sent = 0
        while sent < flood:
            for _ in range(50):
                garbage = b"\x1b[2J\x1b]0;pwned\x07 " + os.urandom(8).hex().encode() * 60
                sender.sendto(garbage + b"\r\n\r\n", ("127.0.0.1", gw.port))
                sent += 1
            # The gateway reads its socket in order: the keepalive's answer means the batch
            # before it was read (50 KB at a time stays far below the socket's buffer).
            assert (await dev.keepalive()).status == 200
        assert await gw.stop() == 0
    finally:
        sender.close()
        await ep.close()
        await gw.kill()
    (stopped,) = gw.named("gateway.stopped")
    assert stopped["metrics"]["sip.rx.parse_error"] == flood
    shown = gw.named("sip.rx.parse_error")
    summaries = [e for e in gw.named("log.suppressed") if e["name"] == "sip.rx.parse_error"]
    assert len(shown) == 20
    assert sum(e["count"] for e in summaries) == flood - len(shown)
    flood_bytes = sum(len(json.dumps(e, ensure_ascii=False)) for e in shown + summaries)
    assert flood_bytes < 20 * 1_000
    assert len(gw.text) < 64 * 1024
    assert "\x1b" not in gw.text and "\x07" not in gw.text
