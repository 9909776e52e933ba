"""Statistics: ``GET /stats`` (now, overall and per unit) and ``GET /stats/history?hours=``.

A :class:`StatsSampler` (started and stopped with the API server) records one point a minute:
devices online/total and channels online/total, in a ring of 24 h (1,440 points). Points are
persisted as store records of kind ``stats`` keyed by the hour they fall in (``h<hour>``,
at most 60 points each): a minute's sample rewrites only its own hour's small record (about
2 KB), and records older than the ring are deleted as hours pass. At start the ring is read
back, so the chart survives a restart.

``online_rate`` of a unit is its online channels over its channels, or, for a unit whose
devices reported no channels yet, its online devices over its devices (``null`` when empty).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request

from gateway.api._views import UNASSIGNED, Views
from gateway.api.auth import Principal, viewer
from gateway.api.context import ApiContext, ctx_of

log = structlog.get_logger("gateway.api.stats")

router = APIRouter(tags=["stats"])

KIND = "stats"
INTERVAL = 60.0
RING = 24 * 60  # one day of points
HOUR = 3600


def _rate(t: dict[str, int]) -> float | None:
    if t["channels_total"]:
        return round(t["channels_online"] / t["channels_total"], 4)
    if t["devices_total"]:
        return round(t["devices_online"] / t["devices_total"], 4)
    return None


class StatsSampler:
    """One point a minute into a persisted 24-hour ring (see the module docstring)."""

    def __init__(self, ctx: ApiContext, *, interval: float = INTERVAL) -> None:
        self.ctx = ctx
        self.interval = interval
        self.points: deque[tuple[float, int, int, int, int]] = deque(maxlen=RING)
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        now = self.ctx.clock()
        horizon = now - RING * INTERVAL
        points: list[tuple[float, int, int, int, int]] = []
        for key, data in self.ctx.store.load_records(KIND):
            rows = data.get("points")
            if not isinstance(rows, list):
                continue
            try:
                hour = int(key[1:])
            except ValueError:
                continue
            if (hour + 1) * HOUR < horizon:
                self.ctx.store.delete_record(KIND, key)
                continue
            for row in rows:
                if isinstance(row, list) and len(row) == 5 and row[0] >= horizon:
                    t, do, dt, co, ct = row
                    points.append((float(t), int(do), int(dt), int(co), int(ct)))
        points.sort()
        self.points.extend(points)

    def start(self) -> None:
        self.load()
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(min(1.0, self.interval))
        while True:
            try:
                await Views.of(self.ctx).warm()  # a few devices per turn of the loop
                self.sample()
            except Exception:
                log.exception("stats.sample_failed")
            await asyncio.sleep(self.interval)

    def sample(self) -> tuple[float, int, int, int, int]:
        """Take one point now and persist its hour."""
        views = Views.of(self.ctx)
        t = views.unit_totals()[""]
        now = self.ctx.clock()
        point = (
            round(now, 1),
            t["devices_online"],
            t["devices_total"],
            t["channels_online"],
            t["channels_total"],
        )
        self.points.append(point)
        hour = int(now // HOUR)
        rows = [list(p) for p in self.points if int(p[0] // HOUR) == hour]
        store = self.ctx.store
        store.save_record(KIND, f"h{hour}", {"points": rows})
        if len(rows) == 1:  # a new hour began: forget the hour that left the ring
            store.delete_record(KIND, f"h{hour - RING // 60 - 1}")
        return point

    def history(self, hours: float) -> list[dict[str, Any]]:
        since = self.ctx.clock() - hours * HOUR
        return [
            {
                "t": t,
                "devices_online": do,
                "devices_total": dt,
                "channels_online": co,
                "channels_total": ct,
            }
            for t, do, dt, co, ct in self.points
            if t >= since
        ]


def sampler_of(ctx: ApiContext) -> StatsSampler:
    s = ctx.extras.get("stats")
    if s is None:
        s = ctx.extras["stats"] = StatsSampler(ctx)
    assert isinstance(s, StatsSampler)
    return s


def _pair(t: dict[str, int], what: str) -> dict[str, int]:
    return {"total": t[f"{what}_total"], "online": t[f"{what}_online"]}


@router.get("/stats")
async def stats(request: Request, who: Annotated[Principal, Depends(viewer)]) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    every = views.unit_totals()
    overall = every[""]
    units = []
    for unit in sorted(ctx.directory.units.values(), key=lambda u: (u.name, u.id)):
        units.append(_unit_stats(unit.id, unit.name, every[unit.id]))
    if every[UNASSIGNED]["devices_total"]:
        units.append(_unit_stats(UNASSIGNED, "unassigned", every[UNASSIGNED]))
    uppers = []
    for uid, s in ctx.uplink.sessions.items():
        state = "registered" if s.link.online else "offline"
        if not s.upper.enabled:
            state = "disabled"
        uppers.append({"id": uid, "name": s.upper.name, "state": state})
    return {
        "devices": _pair(overall, "devices"),
        "channels": _pair(overall, "channels"),
        "online_rate": _rate(overall),
        "units": units,
        "uppers": uppers,
        "sessions": {"active": len(ctx.media.legs)},
    }


def _unit_stats(unit_id: str, name: str, t: dict[str, int]) -> dict[str, Any]:
    return {
        "id": unit_id,
        "name": name,
        "devices": _pair(t, "devices"),
        "channels": _pair(t, "channels"),
        "online_rate": _rate(t),
    }


@router.get("/stats/history")
async def history(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    hours: Annotated[float, Query(gt=0, le=24)] = 24,
) -> dict[str, Any]:
    return {"points": sampler_of(ctx_of(request)).history(hours)}
