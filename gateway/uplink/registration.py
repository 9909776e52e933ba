"""Registration and keepalive to one upper platform (GB/T 28181-2022 §9.1, §9.6; reference §7.1).

The gateway behaves towards the upper like a device: REGISTER with its own ID, answering a
401/407 digest challenge (with or without qop), refreshed at about 60 % of the granted time;
a ``Keepalive`` MESSAGE every ``keepalive_interval``. The upper is *offline* after
``keepalive_timeout_count`` keepalives in a row went unanswered, after a keepalive is refused
(any error status, typically 404: the upper forgot us, e.g. it restarted), after a failed
refresh, or when the TCP connection drops; then the gateway registers again, first at once,
then backing off from ``retry_interval`` (doubling up to 8×) with random jitter, never faster
than ``retry_interval`` after a failure. A 302 (2022 §9.1.2.3) moves registration to the
address and server ID in its Contact; when that server is lost or refuses, registration starts
over at the configured address.
``X-GB-Ver: 3.0`` is sent when the upper is configured for 2022. The ``Date`` of the 200 OK is
the upper's clock (GB time sync); its offset from ours is logged. The time granted is that of
the 200's Contact that is ours (RFC 3261 §10.2.4: the 200 lists every binding of the AOR, which
may include others'), else its Expires header, else what we asked for; a 200 without To tag or
Contact (some platforms) still registers, noted as a quirk of the upper
(:mod:`gateway.uplink.quirks`).

The REGISTERs of a registration share one Call-ID and From tag, the CSeq growing (RFC 3261
§10.2.4). Each accepted one is saved in the store (Call-ID, From tag, CSeq), and after a restart
the gateway goes on with that Call-ID, ``CSEQ_RESUME_GAP`` above the saved CSeq: to the upper it
is a refresh of the registration it may still hold (§10.3 step 7 takes a higher CSeq under the
same Call-ID). A new registration (after losing the upper, or after a redirect) takes a new
Call-ID; should the upper answer that ``500`` (a platform that refuses a second Call-ID while it
holds the first, issue 15), the gateway backs off as after any failure and tries again with the
Call-ID of its last accepted registration, which the upper takes as a refresh.
In a cluster the same continuation moves between nodes: each accepted registration is also told
to ``on_saved`` (kept in Redis), and the node that takes the upper's lease over starts with it
(``start(resume=...)``); a node that loses the lease stops at once without unregistering
(:meth:`UpperLink.halt`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime

import structlog

from gateway.manscdp import Keepalive, encode
from gateway.metrics import Metrics
from gateway.settings import Identity, UpperPlatform
from gateway.sip import (
    DigestClient,
    Endpoint,
    ParseError,
    Peer,
    Request,
    RequestSequence,
    Response,
    SipError,
    SipUri,
    build_request,
    parse_name_addr,
    parse_uri,
)
from gateway.store import Store
from gateway.uplink.quirks import UpperQuirks

log = structlog.get_logger("gateway.uplink.registration")

MAX_REDIRECTS = 3
# After a restart the saved CSeq may be a REGISTER or two behind the last one sent (a crash
# between a 200 and the store's next commit): going on this far above keeps the CSeq higher
# than any the upper saw (RFC 3261 §10.3 step 7 refuses one that is not).
CSEQ_RESUME_GAP = 10


class UpperLink:
    """The gateway's registration at one upper; ``online`` while it holds."""

    def __init__(
        self,
        upper: UpperPlatform,
        *,
        identity: Identity,
        endpoint: Endpoint,
        metrics: Metrics,
        on_online: Callable[[UpperLink], None],
        on_offline: Callable[[UpperLink, str], None],
        next_sn: Callable[[], int],
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        on_saved: Callable[[UpperLink], None] | None = None,
    ) -> None:
        self.upper = upper
        self.store = store
        # Told each registration the upper accepted (a cluster keeps it for the next holder).
        self.on_saved = on_saved
        self.gateway = identity
        self.endpoint = endpoint
        self.metrics = metrics
        self.on_online = on_online
        self.on_offline = on_offline
        self.next_sn = next_sn
        self.clock = clock
        # Where registration starts; a 302 moves ``peer`` and ``server_id`` until the upper is
        # lost or refuses, then it starts over here (2022 §9.1.2.3).
        self.home = Peer(upper.transport, upper.host, upper.port)
        self.peer = self.home
        self.server_id = upper.id
        self.online = False
        self.expires = 0
        self.registered_at = 0.0
        self.clock_offset: float | None = None
        self.failures = 0
        self.registrations = 0
        self.keepalive_misses = 0
        self.last_keepalive: float | None = None  # when the upper last answered one (2xx)
        # One Call-ID and From tag for the REGISTERs of a registration, CSeq growing (RFC 3261
        # §10.2.4); a new registration (after losing the upper, or a redirect) restarts it.
        self._registers = RequestSequence()
        # The sequence of the last registration the upper accepted: the one it may still hold.
        self._held: RequestSequence | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._lost = False
        self.log = log.bind(upper=upper.id)
        self.quirks = UpperQuirks(metrics, self.log)

    @property
    def aor(self) -> str:
        return f"sip:{self.gateway.id}@{self.gateway.domain}"

    @property
    def call_id(self) -> str:
        """The Call-ID of the REGISTERs being sent."""
        return self._registers.call_id

    def start(self, resume: tuple[str, str, int] | None = None) -> None:
        """Register and keep registered. ``resume`` (Call-ID, From tag, CSeq): the registration
        another node of a cluster held, continued (module docstring); otherwise the one the
        store saved, if any."""
        if resume is not None:
            self._resume_from(*resume)
        else:
            self._resume()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def held(self) -> tuple[str, str, int] | None:
        """Call-ID, From tag and CSeq of the last registration the upper accepted."""
        seq = self._held
        return None if seq is None else (seq.call_id, seq.from_tag, seq.cseq)

    def halt(self) -> None:
        """Stop at once without a word to the upper (this node no longer acts for it: another
        node of the cluster holds its lease and goes on with the registration)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self.online = False

    def _resume(self) -> None:
        """Go on with the registration saved before a restart (module docstring)."""
        saved = self.store.load_upper_registrations().get(self.upper.id) if self.store else None
        if saved is None:
            return
        self._resume_from(*saved)

    def _resume_from(self, call_id: str, from_tag: str, cseq: int) -> None:
        self._registers = RequestSequence(call_id, from_tag, cseq + CSEQ_RESUME_GAP)
        self._held = self._registers
        self.log.info("uplink.register_resumed", call_id=call_id, cseq=cseq)

    def _new_registration(self) -> None:
        """A new Call-ID, CSeq from 1 (the From tag kept); ``_held`` keeps the old one."""
        self._registers = RequestSequence(from_tag=self._registers.from_tag)

    async def close(self, *, unregister: bool = True) -> None:
        # The flag as well as the cancel: on Python 3.11 a cancel that lands while
        # asyncio.wait_for's inner connect is failing can be lost (the connect error is raised
        # instead); the loop sees the flag and stops anyway.
        self._stopping = True
        self._wake.set()  # a lost cancel still ends the keepalive loop's wait
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if unregister and self.online:
            try:
                await asyncio.wait_for(self.register(0), 2.0)
            except (TimeoutError, SipError, OSError):
                pass
        self.online = False

    def connection_lost(self, peer: Peer) -> None:
        if peer == self.peer and self.online:
            self._lost = True
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            ok = False
            try:
                ok = await self.register(self.upper.register_expires)
            except (SipError, OSError) as exc:
                self.log.info("uplink.register_failed", error=str(exc))
            except Exception:  # never let the registration loop die silently
                self.log.exception("uplink.register_crashed")
            if self._stopping:
                return
            if not ok:
                self._go_home()
                await asyncio.sleep(self._backoff())
                continue
            self.failures = 0
            try:
                await self._stay_registered()
            except Exception:
                self.log.exception("uplink.keepalive_crashed")
                self._went_offline("internal error")

    def _go_home(self) -> None:
        if self.peer != self.home or self.server_id != self.upper.id:
            self.log.info("uplink.back_to_configured_address", peer=str(self.home))
        self.peer, self.server_id = self.home, self.upper.id

    def _backoff(self) -> float:
        self.failures += 1
        base = self.upper.retry_interval
        return float(base * min(2 ** (self.failures - 1), 8) * random.uniform(1.0, 1.5))

    async def _stay_registered(self) -> None:
        """Keepalives until it is time to refresh; returns when the upper is lost."""
        while not self._stopping:
            interval = self.upper.keepalive_interval  # (changeable at run time)
            refresh_at = self.registered_at + self.expires * random.uniform(0.55, 0.65)
            next_beat = self.clock() + interval
            if refresh_at <= next_beat:
                await self._sleep(max(0.0, refresh_at - self.clock()))
                if self._stopping:
                    return
                if self._lost:
                    return self._went_offline("connection lost")
                try:
                    ok = await self.register(self.upper.register_expires)
                except (SipError, OSError) as exc:
                    self.log.info("uplink.refresh_failed", error=str(exc))
                    ok = False
                if not ok:
                    return self._went_offline("refresh failed")
                continue
            await self._sleep(interval)
            if self._stopping:
                return
            if self._lost:
                return self._went_offline("connection lost")
            verdict = await self.keepalive()
            if self._lost:
                return self._went_offline("connection lost")
            if verdict == "refused":
                return self._went_offline("keepalive refused")
            if verdict == "lost":
                self.keepalive_misses += 1
                if self.keepalive_misses >= self.upper.keepalive_timeout_count:
                    return self._went_offline("keepalive timeout")
            else:
                self.keepalive_misses = 0

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _went_offline(self, reason: str) -> None:
        self._lost = False
        self.keepalive_misses = 0
        if self.online:
            self.online = False
            self.metrics.inc("uplink.offline")
            self.log.warning("uplink.offline", reason=reason)
            self.on_offline(self, reason)
        # A fresh registration (new Call-ID) after losing the upper, where it all started.
        self._new_registration()
        self._go_home()

    # -- REGISTER ---------------------------------------------------------------------------
    def _request(self, expires: int, auth: tuple[str, str] | None) -> Request:
        headers = [("Expires", str(expires))]
        if self.upper.gb_version == "2022":
            headers.append(("X-GB-Ver", "3.0"))
        if auth is not None:
            headers.append(auth)
        return self._registers.request(
            "REGISTER",
            self._register_uri(),
            from_uri=self.aor,
            to_uri=self.aor,
            contact=self.endpoint.contact_uri(self.gateway.id, self.peer),
            headers=headers,
        )

    def _register_uri(self) -> str:
        return f"sip:{self.server_id}@{self.peer.host}:{self.peer.port}"

    async def register(self, expires: int) -> bool:
        """One registration (``expires`` 0 unregisters), answering challenges and following
        redirects. True when the upper accepted it."""
        client = DigestClient(self.gateway.id, self.upper.password)
        auth: tuple[str, str] | None = None
        redirects = 0
        challenges = 0
        min_expires_tried = False
        while True:
            resp = await self.endpoint.request(self._request(expires, auth), self.peer)
            status = resp.status
            if status in (401, 407) and challenges < 2:
                challenges += 1
                header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
                challenge = resp.auth_params(header)
                if challenge is None:
                    self.log.warning("uplink.bad_challenge", status=status)
                    return False
                try:
                    value = client.authorization(challenge[1], "REGISTER", self._register_uri())
                except ValueError as exc:
                    self.log.warning("uplink.unsupported_challenge", error=str(exc))
                    return False
                name = "Authorization" if status == 401 else "Proxy-Authorization"
                auth = (name, value)
                continue
            if status == 423 and not min_expires_tried:  # RFC 3261 §10.2.8: ask for more
                min_expires_tried = True
                wanted = (resp.get_header("Min-Expires") or "").strip()
                if wanted.isascii() and wanted.isdigit() and int(wanted) > expires > 0:
                    expires = int(wanted)
                    continue
            if status in (301, 302) and redirects < MAX_REDIRECTS:
                found = self._redirect_target(resp)
                if found is None:
                    return False
                target, server_id = found
                redirects += 1
                self.log.info("uplink.redirected", to=str(target), server_id=server_id)
                self.metrics.inc("uplink.redirected")
                self.peer, self.server_id = target, server_id
                self._new_registration()
                auth, challenges = None, 0
                client = DigestClient(self.gateway.id, self.upper.password)
                continue
            if status == 500:
                self._refused_new_call_id()
            return self._registered(resp, expires)

    def _refused_new_call_id(self) -> None:
        """A 500 to a REGISTER with a new Call-ID while an earlier registration may still be
        held: the next attempt (after the usual back-off) uses the held one's Call-ID."""
        held = self._held
        if held is None or held is self._registers or held.call_id == self._registers.call_id:
            return
        self.quirks.note("register_500_new_call_id", refused=self._registers.call_id)
        self.log.info("uplink.register_back_to_held_call_id", call_id=held.call_id)
        self._registers = held

    def _redirect_target(self, resp: Response) -> tuple[Peer, str] | None:
        """Where a 302 sends us, and the ID of the server there (the Contact's user part)."""
        contact = resp.get_header("Contact")
        if not contact:
            return None
        try:
            uri = parse_name_addr(contact).uri
        except ParseError:
            return None
        transport = (uri.param("transport") or self.peer.transport).lower()
        if transport not in ("udp", "tcp"):
            transport = self.peer.transport
        return Peer(transport, uri.host, uri.port or 5060), uri.user or self.upper.id

    def _granted(self, resp: Response) -> int | None:
        """The lifetime the registrar gave our binding (RFC 3261 §10.2.4): the ``expires`` of
        the 200's Contact that matches ours, else the Expires header; ``None`` when neither
        gives one. Contacts are compared loosely on what §19.1.4 compares for an address: user,
        host (case-insensitive) and port (absent means 5060). If none matches all three but
        exactly one carries our ID, it is ours, rewritten by a registrar that records the
        address it saw (NAT)."""
        try:
            header = resp.expires
        except ParseError:
            header = None
        try:
            contacts = resp.contacts
        except ParseError:
            return header
        mine = parse_uri(self.endpoint.contact_uri(self.gateway.id, self.peer))

        def same(uri: SipUri) -> bool:
            return (uri.user, uri.host.lower(), uri.port or 5060) == (
                mine.user,
                mine.host.lower(),
                mine.port or 5060,
            )

        ours = [c for c in contacts if same(c.uri)]
        if not ours:
            ours = [c for c in contacts if c.uri.user == mine.user]
            if len(ours) != 1:
                ours = []
        if ours:
            value = ours[0].param("expires")
            if value and value.isascii() and value.isdigit():
                return int(value)
        return header

    def _registered(self, resp: Response, expires: int) -> bool:
        if resp.status >= 300:
            self.metrics.inc("uplink.register_refused")
            self.log.warning("uplink.register_refused", status=resp.status, reason=resp.reason)
            return False
        self._held = seq = self._registers
        if self.store is not None:
            self.store.save_upper_registration(
                self.upper.id, seq.call_id, seq.from_tag, seq.cseq, self.clock()
            )
        if self.on_saved is not None:
            self.on_saved(self)
        if expires == 0:
            self.online = False
            return True
        self._note_bare_ok(resp)
        granted = self._granted(resp)
        self.expires = granted if granted and granted > 0 else expires
        self.registered_at = self.clock()
        self.registrations += 1
        self._note_date(resp.get_header("Date"))
        self.metrics.inc("uplink.registered")
        if not self.online:
            self.online = True
            self.keepalive_misses = 0
            self.log.info("uplink.online", expires=self.expires, peer=str(self.peer))
            self.on_online(self)
        return True

    def _note_bare_ok(self, resp: Response) -> None:
        """A 200 that binds us should carry the registrar's To tag (RFC 3261 §8.2.6.2) and
        list our binding in Contact (§10.3 step 8); some uppers send neither."""
        try:
            tag = resp.to.tag
        except ParseError:
            tag = None
        if not tag:
            self.quirks.note("register_ok_without_to_tag")
        if resp.get_header("Contact") is None:
            self.quirks.note("register_ok_without_contact")

    def _note_date(self, value: str | None) -> None:
        """GB time sync: the upper's ``Date`` is ``yyyy-MM-ddTHH:mm:ss.SSS``, local time."""
        if not value:
            return
        try:
            theirs = datetime.fromisoformat(value.strip()).timestamp()
        except ValueError:
            return
        self.clock_offset = theirs - self.clock()
        if abs(self.clock_offset) > 5:
            self.log.warning("uplink.clock_offset", seconds=round(self.clock_offset, 1))

    # -- keepalive --------------------------------------------------------------------------
    async def keepalive(self) -> str:
        """``ok``, ``refused`` (an error status) or ``lost`` (no answer)."""
        gw = self.gateway.id
        body = encode(Keepalive(sn=self.next_sn(), device_id=gw, status="OK"), self.upper.charset)
        req = build_request(
            "MESSAGE",
            f"sip:{self.server_id}@{self.peer.host}:{self.peer.port}",
            from_uri=self.aor,
            to_uri=f"sip:{self.server_id}@{self.upper.domain}",
            body=body,
            content_type="Application/MANSCDP+xml",
        )
        try:
            # An answer later than the next keepalive is as good as none (timer F is 32 s).
            wait = min(self.upper.keepalive_interval, 32.0)
            resp = await self.endpoint.request(req, self.peer, timeout=wait)
        except (SipError, OSError):
            self.metrics.inc("uplink.keepalive_lost")
            return "lost"
        if resp.status >= 300:
            self.metrics.inc("uplink.keepalive_refused")
            self.log.info("uplink.keepalive_refused", status=resp.status, reason=resp.reason)
            return "refused"
        self.metrics.inc("uplink.keepalive_ok")
        self.last_keepalive = self.clock()
        return "ok"
