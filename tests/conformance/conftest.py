"""Fixtures the suite's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conformance.test_suite_cases import Gateways


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[Gateways]:
    """In-process gateways under test, each closed (within a deadline) at the end."""
    made = Gateways(tmp_path)
    yield made
    for gw in made.started:
        await made.close(gw)
