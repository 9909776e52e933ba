"""The device registrar: REGISTER with digest, keepalive, and online/offline state.

GB/T 28181-2022 §9.1 (registration), §9.6 (keepalive); reference §2. RFC 3261 §10.3 for the
registrar's ordering rules (same Call-ID needs a higher CSeq).

* REGISTER: 401 challenge → 200 with Contact, Expires and ``Date: yyyy-MM-ddTHH:mm:ss.SSS``
  (the GB time sync); 403 for a wrong password or an unknown device under ``reject``; 400 for a
  malformed device ID; ``Expires: 0`` unregisters; Expires clamped to the configured bounds;
  ``X-GB-Ver`` echoed. An answer in a scheme, algorithm or qop the gateway does not implement
  (Basic, MD5-sess, SHA-256, auth-int) gets a fresh 401 challenge (RFC 3261 §22.2: a server
  challenges for credentials it can verify); no password was checked, so it is no failure.
* Password guessing (``lockout.FailureLimits``): wrong passwords are counted per source address
  and per device ID; past the limits the REGISTER gets 403 with ``Retry-After`` without its
  password being checked, and each lock-out is logged once (``register.locked_out``). Every
  nonce is bound to the host it was sent to, so wrong answers cannot be sent in another
  address's name to lock it out; a device registered from a locked address keeps refreshing.
* Keepalive: a registered, online device gets 200 and its liveness is refreshed; anyone else
  gets 404 so that it registers again.
* Offline: when the registration expires, after ``interval × timeout_count`` seconds without a
  keepalive, when the TCP connection the device registered on drops, or when its account is
  disabled, removed or given a new password (:meth:`Registrar.revoke`).
* A device that registers once and never refreshes (a field quirk, ``no_refresh``) while its
  keepalives go on is not dropped at the expiry: it *lapses* (counted on the device, logged
  ``device.registration_lapsed``) and its next keepalive from the very address and transport it
  registered from gets 404 ``registration expired``, which devices answer by registering again
  (reference §2.8: any non-2xx is a missed heartbeat; the simulated device registers at once).
  It stays online meanwhile (no offline/online flap for a binding that was authenticated),
  for at most ``interval × (timeout_count + 2)`` seconds; then it goes offline
  (``expired (never refreshed)``). Keeping it online on keepalives alone, for ever, would let
  unauthenticated datagrams hold a binding past the lifetime the device asked for.

The device's address is the source of its last *authenticated* REGISTER. A keepalive from another
address over UDP does not move it: keepalives are unauthenticated, and moving the address on one
would let anyone who can forge a From header redirect the device's video and controls.

Liveness costs O(1) per keepalive: devices sit in an insertion-ordered dict by last-seen time
(a keepalive moves its device to the end), so the periodic check only looks at the front.
Registration expiries sit in a heap with lazy deletion.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import structlog

from gateway.downlink.lockout import FailureLimits, NewLockOut
from gateway.downlink.quirks import DeviceQuirks
from gateway.events import DeviceOffline, DeviceOnline, EventBus
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.settings import AuthSection, Identity, KeepaliveSection, RegistrarSection
from gateway.sip import (
    Credentials,
    DigestServer,
    Endpoint,
    ParseError,
    Peer,
    Request,
    Response,
    ServerContext,
    Verdict,
    is_digits,
    parse_uri,
)
from gateway.store import Store

log = structlog.get_logger("gateway.downlink.registrar")


def is_gb_id(value: str | None) -> bool:
    return value is not None and len(value) == 20 and value.isascii() and value.isdigit()


def make_tz(name: str) -> tzinfo:
    """``Asia/Shanghai``-style names, ``UTC``, ``LOCAL`` or a fixed ``+08:00`` offset."""
    upper = name.upper()
    if upper == "UTC":
        return UTC
    if upper == "LOCAL":
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else UTC
    if name[:1] in "+-":
        sign = -1 if name[0] == "-" else 1
        hours, _, minutes = name[1:].partition(":")
        return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # no tz database on this host: Beijing time is what devices expect
        return timezone(timedelta(hours=8))


def gb_date(now: float, tz: tzinfo) -> str:
    """The ``Date`` value of GB/T 28181 §9.10: ``yyyy-MM-ddTHH:mm:ss.SSS``, local time, no zone."""
    second = int(now // 1)
    micro = round((now - second) * 1e6)  # as datetime.fromtimestamp rounds
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    key = (second, tz)
    prefix = _DATE_CACHE.get(key)
    if prefix is None:
        # Formatted once a second per zone (every REGISTER 200 carries one): a storm of
        # registrations does not pay strftime for each.
        if len(_DATE_CACHE) > 64:
            _DATE_CACHE.clear()
        prefix = datetime.fromtimestamp(second, tz).strftime("%Y-%m-%dT%H:%M:%S.")
        _DATE_CACHE[key] = prefix
    return f"{prefix}{micro // 1000:03d}"


_DATE_CACHE: dict[tuple[int, tzinfo], str] = {}


def _after(committed: asyncio.Future[None], resp: Response) -> asyncio.Future[Response]:
    """``resp`` once ``committed`` is done: a future chained by a callback, not a task (one
    per REGISTER in a storm)."""
    out: asyncio.Future[Response] = committed.get_loop().create_future()

    def done(f: asyncio.Future[None]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(resp)

    committed.add_done_callback(done)
    return out


class Registrar:
    def __init__(
        self,
        *,
        identity: Identity,
        auth: AuthSection,
        settings: RegistrarSection,
        keepalive: KeepaliveSection,
        endpoint: Endpoint,
        store: Store,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        digest: DigestServer | None = None,
        busy: Callable[[], bool] | None = None,
        quirks: DeviceQuirks | None = None,
        credentials: Callable[[str], str | None] | None = None,
    ) -> None:
        self.identity = identity
        # The password a device must use, or None when it may not register: the directory's
        # accounts and policy (changed at run time through the API), else the [auth] section.
        self.credentials = credentials if credentials is not None else auth.device_password
        self.quirks = quirks if quirks is not None else DeviceQuirks(metrics)
        self.auth = auth
        self.cfg = settings
        self.keepalive = keepalive
        self.endpoint = endpoint
        self.store = store
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.digest = digest or DigestServer(
            identity.domain,
            qop=auth.qop,
            nonce_ttl=auth.nonce_ttl,
            clock=clock,
        )
        self.limits = FailureLimits(
            max_failures_per_device=auth.max_failures_per_device,
            max_failures_per_address=auth.max_failures_per_address,
            failure_window=auth.failure_window,
            lockout_seconds=auth.lockout_seconds,
            max_entries=auth.failure_table_size,
        )
        self.tz = make_tz(identity.time_zone)
        self.devices: dict[str, Device] = {}
        # device_id -> last_seen, kept in last-seen order: the front is the stalest.
        self._by_last_seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._tcp_devices: dict[Peer, set[str]] = {}
        self._timeout = keepalive.interval * keepalive.timeout_count
        self._check_task: asyncio.Task[None] | None = None
        # Devices whose registration ran out while keepalives went on: until when they may
        # still register again before they go offline (the no_refresh quirk).
        self._lapsed: dict[str, float] = {}
        self._grace = keepalive.interval * (keepalive.timeout_count + 2)
        # While the gateway is behind, keepalives may be waiting in its own socket queue:
        # a device is not judged silent then (for at most one timeout in a row).
        self._busy = busy
        self._deferred_since: float | None = None

    # -- the DeviceDirectory (gateway.model) the other parts read through ----------------
    def get(self, device_id: str, /) -> Device | None:
        return self.devices.get(device_id)

    def __contains__(self, device_id: object, /) -> bool:
        return device_id in self.devices

    def values(self) -> Iterable[Device]:
        return self.devices.values()

    def load(self, held_elsewhere: Callable[[str], bool] | None = None) -> None:
        """Take back the devices the store knows. UDP devices whose registration has not
        expired are online again, with a full keepalive period of grace; TCP devices lost their
        connection with the restart, so they are offline until they register again. In a
        cluster sharing its store, the devices another node holds (``held_elsewhere``) are not
        taken: that node judges their liveness (``gateway.cluster``)."""
        devices = self.store.load_devices()
        if held_elsewhere is not None:
            devices = [d for d in devices if not held_elsewhere(d.device_id)]
        self.adopt(devices)
        log.info(
            "registrar.loaded",
            devices=len(self.devices),
            online=sum(1 for d in self.devices.values() if d.online),
        )

    def adopt(self, devices: Iterable[Device]) -> None:
        """Serve ``devices`` (as read from the store) as after a restart (:meth:`load`): at
        start, or when this node of a cluster takes over a dead node's address."""
        now = self.clock()
        for dev in devices:
            self.devices[dev.device_id] = dev
            if not dev.online:
                continue
            if dev.expires_at <= now:
                self._set_offline(dev, "expired")
            elif dev.transport == "tcp":
                self._set_offline(dev, "gateway restart")
            else:
                dev.last_seen = now
                self._by_last_seen[dev.device_id] = now
                self._push_expiry(dev)

    async def start(self) -> None:
        self._check_task = asyncio.create_task(self._check_loop())

    async def close(self) -> None:
        if self._check_task is not None:
            self._check_task.cancel()
            try:
                await self._check_task
            except asyncio.CancelledError:
                pass

    # -- REGISTER -------------------------------------------------------------------------
    def on_register(self, req: Request, ctx: ServerContext) -> Response | Awaitable[Response]:
        metrics = self.metrics
        metrics.inc("register.received")
        device_id = req.to.uri.user
        extra: list[tuple[str, str]] = []
        gb_ver = req.get_header("X-GB-Ver")
        if gb_ver is not None:
            extra.append(("X-GB-Ver", gb_ver))

        def answer(
            status: int, reason: str | None = None, more: tuple[tuple[str, str], ...] = ()
        ) -> Response:
            return self.endpoint.answer(req, status, reason, headers=[*extra, *more])

        # A locked-out address or device gets nothing else, not even a challenge, and its
        # password is not looked at. A device registered from this very host keeps refreshing
        # through its NAT address's lock-out (the neighbours behind it failed, not it).
        now = self.clock()
        valid_id = device_id if is_gb_id(device_id) else None
        bound = self.devices.get(valid_id) if valid_id is not None else None
        registered_here = (
            bound is not None
            and bound.online
            and bound.expires_at > now
            and bound.host == ctx.peer.host
        )
        locked = self.limits.check(valid_id, ctx.peer.host, now, registered_here=registered_here)
        if locked is not None:
            metrics.inc(f"register.refused_locked.{locked.kind}")
            return answer(
                403,
                "Forbidden (too many failed attempts)",
                (("Retry-After", str(locked.retry_after)),),
            )
        if not is_gb_id(device_id):
            metrics.inc("register.bad_id")
            log.warning("register.bad_id", peer=str(ctx.peer), device_id=device_id)
            return answer(400, "Bad Request (device ID must be 20 digits)")
        assert device_id is not None
        password = self.credentials(device_id)
        if password is None:
            metrics.inc("register.unknown_device")
            log.warning("register.unknown_device", peer=str(ctx.peer), device_id=device_id)
            return answer(403, "Forbidden (unknown device)")

        scheme = (req.get_header("Authorization") or "").split(maxsplit=1)[:1]
        if scheme and scheme[0].lower() != "digest":
            # Basic or another scheme: not malformed, just not ours (RFC 3261 §22.2).
            return self._auth_failed(Verdict.UNSUPPORTED, device_id, ctx.peer, answer)
        auth = req.auth_params("Authorization")
        creds = Credentials.from_params(*auth) if auth is not None else None
        if auth is not None and creds is None:
            metrics.inc("register.bad_credentials")
            return answer(400, "Bad Request (malformed Authorization)")
        if creds is None:
            metrics.inc("register.challenged")
            challenge = self.digest.challenge(bind=ctx.peer.host)
            return answer(401, None, (("WWW-Authenticate", challenge),))
        if not self.digest.supports(creds):
            return self._auth_failed(Verdict.UNSUPPORTED, device_id, ctx.peer, answer)
        if creds.username != device_id:
            metrics.inc("register.bad_credentials")
            log.warning(
                "register.username_mismatch",
                peer=str(ctx.peer),
                device_id=device_id,
                username=creds.username,
            )
            return answer(403, "Forbidden (username is not the device ID)")
        if not self._digest_uri_is_ours(creds.uri):
            metrics.inc("register.bad_credentials")
            log.warning(
                "register.digest_uri_mismatch",
                peer=str(ctx.peer),
                device_id=device_id,
                uri=creds.uri,
            )
            # RFC 2617 §3.2.2.5: credentials computed for another URI get 400.
            return answer(400, "Bad Request (digest uri is not this server)")
        verdict = self.digest.verify(creds, "REGISTER", password, bind=ctx.peer.host)
        if verdict is not Verdict.OK:
            return self._auth_failed(verdict, device_id, ctx.peer, answer)
        self.limits.succeeded(device_id, ctx.peer.host)

        expires = self._requested_expires(req)
        if expires == 0:
            return self._unregister(req, device_id, ctx.peer, answer)
        cfg = self.cfg
        expires = max(cfg.min_expires, min(cfg.max_expires, expires))

        dev = self.devices.get(device_id)
        call_id = req.call_id
        cseq = req.cseq.seq
        live = dev is not None and dev.online and dev.expires_at > self.clock()
        # RFC 3261 §10.3 orders requests against an existing binding only: a device that went
        # offline and rebooted may reuse its Call-ID with CSeq starting over.
        if live and dev is not None and dev.call_id == call_id and cseq <= dev.cseq:
            metrics.inc("register.out_of_order")
            log.warning("register.out_of_order", device_id=device_id, cseq=cseq, last=dev.cseq)
            return answer(500, "Server Internal Error (out-of-order CSeq for this Call-ID)")
        self._bind(dev, device_id, req, ctx.peer, expires, gb_ver or "")
        metrics.inc("register.ok")
        contacts = req.contacts
        contact = str(contacts[0].with_param("expires", str(expires))) if contacts else ""
        more = [("Expires", str(expires)), ("Date", gb_date(self.clock(), self.tz))]
        if contact:
            more.insert(0, ("Contact", contact))
        # Group commit: the 200 leaves once the binding is on disk (store.committed).
        committed = self.store.committed()
        ok = answer(200, "OK", tuple(more))
        return ok if committed is None else _after(committed, ok)

    def _digest_uri_is_ours(self, uri: str) -> bool:
        """The digest ``uri`` must name this gateway: its ID, its domain, or no user at all
        (``sip:IP:port``). Devices write the configured server ID@domain, whatever address
        they send the REGISTER to, so the host part is not compared."""
        try:
            user = parse_uri(uri).user
        except ParseError:
            return False
        gw = self.identity
        return not user or user in (gw.id, gw.domain)

    def _requested_expires(self, req: Request) -> int:
        if req.contact_star:
            return 0
        contacts = req.contacts
        if contacts:
            param = contacts[0].param("expires")
            if param is not None:
                if not is_digits(param):
                    raise ParseError("Bad Contact", f"expires={param!r}")
                return int(param)
        value = req.expires
        return self.cfg.default_expires if value is None else value

    def _auth_failed(
        self,
        verdict: Verdict,
        device_id: str,
        peer: Peer,
        answer: Callable[..., Response],
    ) -> Response:
        self.metrics.inc(f"register.auth.{verdict.name.lower()}")
        log.warning(
            "register.auth_failed", peer=str(peer), device_id=device_id, verdict=verdict.value
        )
        if verdict is Verdict.BAD_PASSWORD:
            for lock in self.limits.failed(device_id, peer.host, self.clock()):
                self._locked_out(lock, device_id, peer)
            return answer(403, "Forbidden (wrong password)")
        if verdict is Verdict.STALE:
            return answer(
                401,
                "Unauthorized (stale nonce)",
                (("WWW-Authenticate", self.digest.challenge(stale=True, bind=peer.host)),),
            )
        if verdict in (Verdict.UNKNOWN_NONCE, Verdict.REPLAY, Verdict.WRONG_REALM):
            return answer(
                401,
                f"Unauthorized ({verdict.value})",
                (("WWW-Authenticate", self.digest.challenge(bind=peer.host)),),
            )
        if verdict is Verdict.USED_UP:
            # Not stale=true: that would tell the client to resend the same password unasked.
            return answer(
                401,
                "Unauthorized (nonce used up)",
                (("WWW-Authenticate", self.digest.challenge(bind=peer.host)),),
            )
        if verdict is Verdict.UNSUPPORTED:
            # A protocol mismatch, not a wrong password: challenge again with what we offer
            # (MD5, qop=auth or none). No password was checked, so it is no failed guess.
            return answer(
                401,
                "Unauthorized (only MD5 digest)",
                (("WWW-Authenticate", self.digest.challenge(bind=peer.host)),),
            )
        return answer(400, "Bad Request (malformed Authorization)")

    def _locked_out(self, lock: NewLockOut, device_id: str, peer: Peer) -> None:
        self.metrics.inc(f"register.locked_out.{lock.kind}")
        log.warning(
            "register.locked_out",
            limit=lock.kind,
            key=lock.key,
            failures=lock.failures,
            seconds=lock.seconds,
            peer=str(peer),
            device_id=device_id,
        )

    def _bind(
        self,
        dev: Device | None,
        device_id: str,
        req: Request,
        peer: Peer,
        expires: int,
        gb_ver: str,
    ) -> None:
        now = self.clock()
        self._lapsed.pop(device_id, None)
        first_time = dev is None
        if dev is None:
            dev = Device(device_id)
            self.devices[device_id] = dev
        was_online = dev.online
        # A new Call-ID while online is a new registration (the device rebooted), not a refresh.
        restarted = was_online and dev.call_id != req.call_id
        moved = was_online and (dev.transport, dev.host, dev.port) != (
            peer.transport,
            peer.host,
            peer.port,
        )
        if moved:
            log.info(
                "device.address_changed",
                device_id=device_id,
                old=f"{dev.transport}:{dev.host}:{dev.port}",
                new=str(peer),
            )
        if dev.transport == "tcp" and (moved or not was_online):
            self._untrack_tcp(dev)
        dev.transport, dev.host, dev.port = peer.transport, peer.host, peer.port
        contacts = req.contacts
        dev.contact = str(contacts[0].uri) if contacts else ""
        dev.expires = expires
        dev.registered_at = now
        dev.expires_at = now + expires
        dev.last_seen = now
        dev.online = True
        dev.call_id = req.call_id
        dev.cseq = req.cseq.seq
        dev.user_agent = req.get_header("User-Agent") or ""
        dev.gb_version = gb_ver
        if peer.transport == "tcp":
            self._tcp_devices.setdefault(peer, set()).add(device_id)
            self.endpoint.mark_trusted(peer)  # kept when the connection cap makes room
        self._touch(device_id, now)
        self._push_expiry(dev)
        self.store.save_device(dev)
        if not was_online or restarted:
            log.info("device.registered", device_id=device_id, peer=str(peer), expires=expires)
            self.events.publish(
                DeviceOnline(device_id, peer.transport, peer.host, peer.port, first_time)
            )
        else:
            log.debug("device.refreshed", device_id=device_id, expires=expires)

    def _push_expiry(self, dev: Device) -> None:
        """Every refresh adds an entry (old ones are skipped when due); rebuild the heap from
        the online devices when stale entries outnumber live ones, so refreshes cannot grow it
        without bound."""
        heap = self._expiries
        heapq.heappush(heap, (dev.expires_at, dev.device_id))
        if len(heap) > 2 * len(self._by_last_seen) + 1024:
            self._expiries = [
                (d.expires_at, d.device_id) for d in self.devices.values() if d.online
            ]
            heapq.heapify(self._expiries)

    def _unregister(
        self, req: Request, device_id: str, peer: Peer, answer: Callable[..., Response]
    ) -> Response:
        dev = self.devices.get(device_id)
        if dev is not None:
            if dev.online:
                self._set_offline(dev, "unregistered")
            dev.expires_at = self.clock()
            dev.expires = 0
            self.store.save_device(dev)
        self.metrics.inc("register.unregistered")
        log.info("device.unregistered", device_id=device_id, peer=str(peer))
        return answer(200, "OK", (("Expires", "0"), ("Date", gb_date(self.clock(), self.tz))))

    # -- keepalive ------------------------------------------------------------------------
    def on_keepalive(self, req: Request, ctx: ServerContext, device_id: str | None) -> Response:
        """A ``Notify/Keepalive`` MESSAGE (GB/T 28181-2022 §9.6). ``device_id`` comes from the
        SIP From user; the body's DeviceID is not trusted over it."""
        dev = self.devices.get(device_id) if device_id else None
        if dev is None or not dev.online:
            self.metrics.inc("keepalive.unregistered")
            log.info("keepalive.unregistered", peer=str(ctx.peer), device_id=device_id)
            return self.endpoint.answer(req, 404, "Not Found (device not registered)")
        peer = ctx.peer
        if dev.device_id in self._lapsed and (dev.transport, dev.host, dev.port) == (
            peer.transport,
            peer.host,
            peer.port,
        ):
            # The registration ran out: ask for a new one (see the module docstring). The
            # device is alive, so the grace, not the keepalive timeout, decides its end.
            self.metrics.inc("keepalive.lapsed")
            self._touch(dev.device_id, self.clock())
            return self.endpoint.answer(req, 404, "Not Found (registration expired)")
        if dev.port != peer.port or dev.host != peer.host or dev.transport != peer.transport:
            self.metrics.inc("keepalive.address_mismatch")
            log.info(
                "keepalive.address_mismatch",
                device_id=device_id,
                registered=f"{dev.transport}:{dev.host}:{dev.port}",
                seen=str(peer),
            )
        self.metrics.inc("keepalive.ok")
        self._touch(dev.device_id, self.clock())
        return self.endpoint.answer(req, 200, "OK")

    def _touch(self, device_id: str, now: float) -> None:
        order = self._by_last_seen
        order.pop(device_id, None)
        order[device_id] = now
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.last_seen = now

    # -- offline detection ----------------------------------------------------------------
    def on_connection_lost(self, peer: Peer) -> None:
        for device_id in self._tcp_devices.pop(peer, set()):
            dev = self.devices.get(device_id)
            if dev is not None and dev.online and dev.transport == "tcp":
                self._set_offline(dev, "connection lost")

    def _untrack_tcp(self, dev: Device) -> None:
        ids = self._tcp_devices.get(Peer("tcp", dev.host, dev.port))
        if ids is not None:
            ids.discard(dev.device_id)

    def _set_offline(self, dev: Device, reason: str) -> None:
        dev.online = False
        self._lapsed.pop(dev.device_id, None)
        self._by_last_seen.pop(dev.device_id, None)
        if dev.transport == "tcp":
            self._untrack_tcp(dev)
        self.store.save_device(dev)
        self.metrics.inc("device.offline")
        log.info("device.offline", device_id=dev.device_id, reason=reason)
        self.events.publish(DeviceOffline(dev.device_id, reason))

    def revoke(self, device_id: str, reason: str) -> bool:
        """The device's account was disabled, removed or given a new password: its binding
        (made with the old credentials) is dropped at once, as an expiry would, and the device
        goes offline through the usual path (``DeviceOffline``: channels OFF, calls ended).
        Its keepalives then get 404 and its next REGISTER is checked against the account as it
        is now (403, or a challenge for the new password). True if a live binding was dropped."""
        dev = self.devices.get(device_id)
        if dev is None:
            return False
        dev.expires_at = min(dev.expires_at, self.clock())
        dev.expires = 0
        if not dev.online:
            self._lapsed.pop(device_id, None)
            self.store.save_device(dev)
            return False
        self.metrics.inc("register.revoked")
        log.info("device.revoked", device_id=device_id, reason=reason)
        self._set_offline(dev, reason)  # saves the device
        return True

    def release(self, device_id: str) -> bool:
        """The device registered at another node of the cluster after it registered here
        (``gateway.cluster.Replica``): that node holds it now and judges its liveness, so its
        binding here is dropped quietly (no offline event: the device is not offline, and its
        channels' state comes from that node). True if a live binding was dropped."""
        dev = self.devices.get(device_id)
        if dev is None or not dev.online:
            return False
        dev.online = False
        self._lapsed.pop(device_id, None)
        self._by_last_seen.pop(device_id, None)
        if dev.transport == "tcp":
            self._untrack_tcp(dev)
        self.metrics.inc("device.moved_away")
        log.info("device.moved_away", device_id=device_id)
        return True

    def revoke_unauthorised(self, reason: str) -> int:
        """Revoke every online device that may no longer register at all (the unknown-devices
        policy turned to ``reject``); how many went offline."""
        gone = [d.device_id for d in self.devices.values() if d.online]
        return sum(self.revoke(i, reason) for i in gone if self.credentials(i) is None)

    def check(self) -> None:
        """Mark offline every device whose keepalives stopped or whose registration ran out."""
        now = self.clock()
        self.limits.prune(now)
        horizon = now - self._timeout
        order = self._by_last_seen
        stale: list[str] = []
        if self._busy is not None and self._busy():
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < self._timeout:
                self.metrics.inc("keepalive.check_deferred")
                order = {}  # judge no one silent this round; expiry is still checked
        else:
            self._deferred_since = None
        for device_id, seen in order.items():
            if seen > horizon:
                break
            stale.append(device_id)
        for device_id in stale:
            dev = self.devices.get(device_id)
            if dev is not None and dev.online:
                self._set_offline(dev, "keepalive timeout")
            else:
                order.pop(device_id, None)
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, device_id = heapq.heappop(heap)
            dev = self.devices.get(device_id)
            if dev is not None and dev.online and dev.expires_at <= now:
                self._expired(dev, now)

    def _expired(self, dev: Device, now: float) -> None:
        """The registration ran out: offline, unless keepalives still come (lapse first)."""
        device_id = dev.device_id
        until = self._lapsed.get(device_id)
        if until is None:
            if dev.last_seen > dev.registered_at and now - dev.last_seen < self._timeout:
                until = self._lapsed[device_id] = now + self._grace
                heapq.heappush(self._expiries, (until, device_id))
                self.metrics.inc("register.lapsed")
                self.quirks.note(device_id, "no_refresh", expires=dev.expires)
                log.info(
                    "device.registration_lapsed",
                    device_id=device_id,
                    quirk="no_refresh",
                    expires=dev.expires,
                    grace=self._grace,
                )
                return
            self._set_offline(dev, "expired")
        elif until <= now:
            self._set_offline(dev, "expired (never refreshed)")
        else:  # the heap was rebuilt from expires_at: wait for the end of the grace again
            heapq.heappush(self._expiries, (until, device_id))

    async def _check_loop(self) -> None:
        period = self.keepalive.check_interval
        while True:
            await asyncio.sleep(period)
            try:
                self.check()
                self.digest.prune()
            except Exception:
                log.exception("registrar.check_failed")

    def online_count(self) -> int:
        return len(self._by_last_seen)
