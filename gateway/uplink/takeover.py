"""Each upper platform served by one node of a cluster at a time, and taken over by another
when that node dies (issue 18).

A node acts for an upper only while it holds the lease ``upper:{id}``
(:mod:`gateway.cluster.leases`): when granted, it registers; when lost, it stops at once,
without a word to the upper (no un-REGISTER, no terminating NOTIFY: the next holder goes on
with them), and ends its media sessions with that upper. While it holds the lease it keeps in
Redis, for whoever comes next (:class:`gateway.cluster.UpperState`, fenced writes):

* the registration the upper accepted (Call-ID, From tag, CSeq), on each acceptance: the next
  holder sends the same Call-ID with a higher CSeq (``CSEQ_RESUME_GAP`` above,
  :mod:`gateway.uplink.registration`), so the upper
  sees a refresh from the one lower platform it knows, now at another address (RFC 3261
  §10.2.4, §10.3 step 7);
* the media dialogs with the upper and the subscriptions the upper made to us, every third of
  the lease time: the next holder ends the dialogs with BYE (their media died with the node)
  and goes on notifying in each subscription (a NOTIFY of the whole shared catalog in a
  catalog subscription, then the changes as usual), its CSeqs :data:`NOTIFY_CSEQ_GAP` above
  the last one kept. What changed in the last third of a lease before a crash can be missed:
  a dialog made then is not ended by the next holder (the upper ends it when its media stops).
  Every :data:`FULL_SYNC_EVERY` rounds everything is written again, so what a Redis restarted
  empty lost is back within a few lease times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gateway.cluster import Cluster, LeaseLike
from gateway.events import UpperOffline
from gateway.manscdp import DecodeError, decode, encode
from gateway.sip import Dialog, Notifier, Peer, SipError, send_bye
from gateway.uplink.registration import UpperLink
from gateway.uplink.session import UpperSession
from gateway.uplink.subscriptions import KINDS, InboundSubscription

if TYPE_CHECKING:
    from gateway.uplink.service import Uplink

log = structlog.get_logger("gateway.uplink.takeover")

NOTIFY_CSEQ_GAP = 100  # NOTIFYs or INFOs sent after the last sync (a third of a lease)
BYE_CSEQ_GAP = 100
FULL_SYNC_EVERY = 10  # rounds (a third of a lease each)


def dialog_record(d: Dialog) -> dict[str, Any]:
    return {
        "call_id": d.call_id,
        "local_tag": d.local_tag,
        "remote_tag": d.remote_tag,
        "local": d.local,
        "remote": d.remote,
        "target": d.target,
        "peer": [d.peer.transport, d.peer.host, d.peer.port],
        "local_cseq": d.local_cseq,
        "remote_cseq": d.remote_cseq,
    }


def dialog_from(record: dict[str, Any], gap: int) -> Dialog:
    transport, host, port = record["peer"]
    return Dialog(
        call_id=str(record["call_id"]),
        local_tag=str(record["local_tag"]),
        remote_tag=str(record["remote_tag"]),
        local=str(record["local"]),
        remote=str(record["remote"]),
        target=str(record["target"]),
        peer=Peer(str(transport), str(host), int(port)),
        local_cseq=int(record["local_cseq"]) + gap,
        remote_cseq=int(record.get("remote_cseq", 0)),
    )


def subscription_record(sub: InboundSubscription) -> dict[str, Any]:
    n = sub.notifier
    return {
        "kind": sub.kind,
        "target": sub.target,
        "query": encode(sub.query, "UTF-8").decode("utf-8"),
        "event": n.event,
        "expires_at": n.expires_at,
        "dialog": dialog_record(n.dialog),
    }


def subscription_from(record: dict[str, Any]) -> InboundSubscription | None:
    """The subscription kept by the last holder, its NOTIFY CSeq moved on; ``None`` when the
    record cannot be read."""
    try:
        query = decode(str(record["query"]).encode("utf-8")).message
        kind = str(record["kind"])
        if kind not in KINDS:
            return None
        notifier = Notifier(
            dialog_from(record["dialog"], NOTIFY_CSEQ_GAP),
            str(record["event"]),
            float(record["expires_at"]),
        )
        return InboundSubscription(
            kind=kind, target=str(record["target"]), query=query, notifier=notifier
        )
    except (KeyError, TypeError, ValueError, DecodeError):
        return None


class UpperTakeover:
    """The leases of the uppers of one :class:`~gateway.uplink.service.Uplink` in a cluster
    (module docstring)."""

    def __init__(self, uplink: Uplink, cluster: Cluster) -> None:
        self.uplink = uplink
        self.cluster = cluster
        self.leases: dict[str, LeaseLike] = {}
        self._sync: dict[str, asyncio.Task[None]] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._resume: dict[str, list[InboundSubscription]] = {}
        self._closing = False
        # Media dialogs with an upper (Calls knows them; app.py wires this).
        self.dialogs_of: Callable[[str], list[Dialog]] = lambda upper_id: []

    def holder(self, upper_id: str) -> bool:
        lease = self.leases.get(upper_id)
        return lease is not None and lease.holder

    def hold(self, s: UpperSession) -> None:
        """Try for the upper's lease; register when granted."""
        upper_id = s.upper.id
        if upper_id in self.leases:
            return
        s.fenced = True
        lease = self.cluster.lease(
            f"upper:{upper_id}",
            on_gained=lambda token: self._gained(upper_id, token),
            on_lost=lambda reason: self._lost(upper_id, reason),
        )
        self.leases[upper_id] = lease
        lease.start()

    async def release(self, upper_id: str, *, forget: bool) -> None:
        """Stop trying for the upper's lease (given back when held); with ``forget`` (the upper
        removed) what was kept of it goes too."""
        self.leases.pop(upper_id, None)
        await self.cluster.drop_lease(f"upper:{upper_id}")
        self._stop_sync(upper_id)
        if forget and self.cluster.uppers is not None:
            try:
                await self.cluster.uppers.forget(upper_id)
            except Exception as exc:  # Redis unreachable: the hash stays, harmless
                log.info("cluster.upper_forget_failed", upper=upper_id, error=str(exc)[:200])

    async def close(self) -> None:
        """Shutdown: every lease given back (another node takes over at once), nothing said to
        the uppers (the next holder goes on with the registration)."""
        self._closing = True
        for upper_id in list(self.leases):
            await self.release(upper_id, forget=False)

    # -- gained, lost -----------------------------------------------------------------------
    async def _gained(self, upper_id: str, token: int) -> None:
        up = self.uplink
        s = up.sessions.get(upper_id)
        if s is None:
            return
        state: dict[str, Any] = {}
        if self.cluster.uppers is not None:
            # The lease was just granted, so Redis answers; a read that fails now (a pooled
            # connection dropped by a Redis restart) is tried again before the registration
            # starts afresh, which the upper would see as a new Call-ID.
            for attempt in range(4):
                try:
                    state = await self.cluster.uppers.load(upper_id)
                    break
                except Exception as exc:
                    if attempt == 3 or not self.holder(upper_id):
                        log.warning(
                            "cluster.upper_state_unreadable", upper=upper_id, error=str(exc)
                        )
                        break
                    await asyncio.sleep(0.1 * (attempt + 1))
        if not self.holder(upper_id):
            return
        reg = state.get("reg")
        resume: tuple[str, str, int] | None = None
        if isinstance(reg, dict):
            try:
                resume = (str(reg["call_id"]), str(reg["from_tag"]), int(reg["cseq"]))
            except (KeyError, TypeError, ValueError):
                resume = None
        s.link.halt()
        s.fenced = False
        s.link = up.new_link(s.upper)
        s.link.start(resume=resume)
        log.info(
            "cluster.upper_taken_over",
            upper=upper_id,
            token=token,
            call_id=resume[0] if resume else None,
            dialogs=sum(1 for k in state if k.startswith("dlg:")),
            subscriptions=sum(1 for k in state if k.startswith("sub:")),
        )
        subs = [subscription_from(v) for k, v in state.items() if k.startswith("sub:")]
        self._resume[upper_id] = [x for x in subs if x is not None]
        self._written[upper_id] = {}
        dead = [v for k, v in state.items() if k.startswith("dlg:") and isinstance(v, dict)]
        self._sync[upper_id] = asyncio.ensure_future(self._keep_synced(upper_id))
        await self._end_dialogs(upper_id, dead)

    async def _end_dialogs(self, upper_id: str, records: list[dict[str, Any]]) -> None:
        """BYE for each media dialog the last holder had with the upper (they died with it)."""
        endpoint = self.uplink.endpoint
        dropped: list[str] = []
        for record in records:
            try:
                dialog = dialog_from(record, BYE_CSEQ_GAP)
            except (KeyError, TypeError, ValueError):
                continue
            try:
                resp = await send_bye(endpoint, dialog, timeout=endpoint.timers.timeout)
            except (SipError, OSError) as exc:
                resp = None
                log.info("cluster.orphan_bye_failed", upper=upper_id, error=str(exc))
            self.uplink.metrics.inc("cluster.orphan_dialog_ended")
            log.info(
                "cluster.orphan_dialog_ended",
                upper=upper_id,
                call_id=dialog.call_id,
                status=resp.status if resp is not None else None,
            )
            dropped.append(f"dlg:{dialog.call_id}")
        if dropped:
            await self._write(upper_id, drop=dropped)

    def _lost(self, upper_id: str, reason: str) -> None:
        """Stop acting for the upper at once (fencing): no request to it from here on."""
        self._stop_sync(upper_id)
        self._resume.pop(upper_id, None)
        up = self.uplink
        s = up.sessions.get(upper_id)
        if s is None:
            return
        s.fenced = True
        s.link.halt()
        for sub in s.subs.values():
            sub.notifier.terminated = True  # no NOTIFY in it from here (kept for the next)
        if s.catalog_task is not None and not s.catalog_task.done():
            s.catalog_task.cancel()
        up.notifier.close([s])
        log.warning("cluster.upper_released", upper=upper_id, reason=reason)
        if not self._closing:
            up.events.publish(UpperOffline(upper_id, f"lease lost ({reason})"))

    def online(self, link: UpperLink) -> None:
        """Registered: the subscriptions the last holder kept go on."""
        upper_id = link.upper.id
        subs = self._resume.pop(upper_id, None)
        s = self.uplink.sessions.get(upper_id)
        if not subs or s is None or s.link is not link:
            return
        now = self.uplink.clock()
        for sub in subs:
            if sub.notifier.expired(now) or sub.kind in s.subs:
                continue
            s.subs[sub.kind] = sub
            self.uplink.notifier.resume(s, sub)
            log.info("cluster.subscription_resumed", upper=upper_id, kind=sub.kind)

    # -- what is kept in Redis --------------------------------------------------------------
    def registration_saved(self, link: UpperLink) -> None:
        held = link.held
        upper_id = link.upper.id
        if held is None or not self.holder(upper_id):
            return
        call_id, from_tag, cseq = held
        reg = {"call_id": call_id, "from_tag": from_tag, "cseq": cseq}
        self.uplink.spawn(self._write(upper_id, put={"reg": reg}))

    def snapshot(self, upper_id: str) -> dict[str, Any]:
        """What the upper's hash should hold now (besides ``reg``)."""
        out: dict[str, Any] = {}
        for d in self.dialogs_of(upper_id):
            out[f"dlg:{d.call_id}"] = dialog_record(d)
        s = self.uplink.sessions.get(upper_id)
        if s is not None:
            for kind, sub in s.subs.items():
                if not sub.ended:
                    out[f"sub:{kind}"] = subscription_record(sub)
        return out

    async def sync(self, upper_id: str) -> None:
        """Write what changed since the last sync (fenced: nothing when the lease is gone)."""
        now = self.snapshot(upper_id)
        before = self._written.get(upper_id, {})
        put = {k: v for k, v in now.items() if before.get(k) != v}
        drop = [k for k in before if k not in now]
        if self._resume.get(upper_id):
            # Not yet resumed: what the last holder kept must not be dropped meanwhile.
            drop = [k for k in drop if not k.startswith("sub:")]
        if (put or drop) and await self._write(upper_id, put=put, drop=drop):
            self._written[upper_id] = now

    async def _keep_synced(self, upper_id: str) -> None:
        # The subscriptions the last holder kept are dropped from the hash only once they
        # are ours (or expired); the first sync reads what is there.
        if self.cluster.uppers is not None:
            try:
                state = await self.cluster.uppers.load(upper_id)
                self._written[upper_id] = {k: v for k, v in state.items() if k != "reg"}
            except Exception as exc:
                log.info("cluster.upper_sync_failed", upper=upper_id, error=str(exc)[:200])
        rounds = 0
        while self.holder(upper_id):
            await asyncio.sleep(self.cluster.lease_seconds / 3)
            rounds += 1
            if rounds % FULL_SYNC_EVERY == 0:
                # Now and then everything again: Redis may have restarted empty meanwhile
                # (the lease survives that, see gateway.cluster.leases).
                self._written[upper_id] = {}
                s = self.uplink.sessions.get(upper_id)
                if s is not None:
                    self.registration_saved(s.link)
            try:
                await self.sync(upper_id)
            except Exception as exc:  # Redis unreachable: the lease will say so
                log.debug("cluster.upper_sync_failed", upper=upper_id, error=str(exc)[:200])

    def _stop_sync(self, upper_id: str) -> None:
        task = self._sync.pop(upper_id, None)
        if task is not None and not task.done():
            task.cancel()

    async def _write(
        self,
        upper_id: str,
        *,
        put: dict[str, Any] | None = None,
        drop: list[str] | None = None,
    ) -> bool:
        lease = self.leases.get(upper_id)
        uppers = self.cluster.uppers
        if lease is None or lease.token is None or uppers is None:
            return False
        value = f"{self.cluster.node_id}:{lease.token}"
        try:
            return await uppers.write(upper_id, value, put=put, drop=drop)
        except Exception as exc:
            log.debug("cluster.upper_write_failed", upper=upper_id, error=str(exc)[:200])
            return False
