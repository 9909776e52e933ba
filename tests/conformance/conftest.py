"""Fixtures the suite's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint
from gateway.sip.transaction import TimerConfig
from tests.conformance.test_suite_cases import Gateways


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[Gateways]:
    """In-process gateways under test, each closed (within a deadline) at the end."""
    made = Gateways(tmp_path)
    yield made
    for gw in made.started:
        await made.close(gw)


@pytest.fixture
async def device_endpoint() -> AsyncIterator[Endpoint]:
    """An endpoint on 127.0.0.1 with short SIP timers for a simulated peer under test."""
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()
