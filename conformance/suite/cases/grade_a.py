"""Grade A of the self-test: registration, time sync, keepalive, catalog, live view, PTZ.

GB/T 28181-2016 and -2022 §9.1 (registration), §9.10 (time sync), §9.6 (keepalive),
§9.5 (catalog; Annex M multi-response), §9.2 (live view; Annexes D, F/G, L), §9.3 (PTZ; A.3).
Cases named "(device side)" judge the target as a device (the suite is its platform: a device
target, or a gateway's uplink); "(platform side)" judge it as a platform (the suite is devices
below it: a platform target, or a gateway's downlink).
"""

from __future__ import annotations

import time
from typing import Any

from conformance.suite.case import case
from conformance.suite.cases.common import (
    MAX_UDP_REQUEST,
    answer_problems,
    content_type_ok,
    date_problems,
    end_call,
    fail_problems,
    frames,
    invite,
    item_differences,
    item_elements,
    item_problems,
    multi_problems,
    offer_problems,
    refusal_line,
    short,
    ssrc_problems,
    until,
)
from conformance.suite.context import Context
from conformance.suite.progress import waiting
from conformance.suite.timing import refresh_wait
from gateway.manscdp.gbid import item_kind
from gateway.manscdp.messages import CatalogItem, DeviceControl, PresetQuery
from gateway.manscdp.ptz import decode_ptz, preset_set, ptz_move, ptz_stop
from gateway.sip.errors import ParseError
from gateway.sip.message import Request, Response

BOTH = ("2016", "2022")
TARGET_DEVICE = ("device", "gateway")
TARGET_PLATFORM = ("platform", "gateway")
FRAMES_WANTED = 25  # one second of video at 25 fps
# A-REG-07 waits out a registration the target grants for at most this long (s): a minimum of
# 60 s or a few minutes is common; a platform granting an hour to a 2 s request is skipped.
LONGEST_GRANT_WAITED = 300


# -- helpers --------------------------------------------------------------------------------
def _register_request_problems(req: Request, target_id: str, server_id: str) -> list[str]:
    """A REGISTER as the device side sends it (reference §2.1, RFC 3261 §10.2)."""
    out: list[str] = []
    try:
        ruri = req.request_uri
        if ruri.user != server_id:
            out.append(f"Request-URI {req.uri}: the user part is not the platform's ID {server_id}")
        for name, addr in (("From", req.from_), ("To", req.to)):
            if addr.uri.user != target_id:
                out.append(f"{name} {addr.uri} does not name {target_id}")
        if not req.from_.tag:
            out.append("From has no tag")
        if not req.contacts and not req.contact_star:
            out.append("no Contact")
        expires = req.expires
        contact_expires = req.contacts[0].param("expires") if req.contacts else None
        if expires is None and contact_expires is None:
            out.append("no Expires (neither the header nor a Contact parameter)")
        branch = req.top_via.branch or ""
        if not branch.startswith("z9hG4bK"):
            out.append(f"Via branch {branch!r} lacks the RFC 3261 magic cookie z9hG4bK")
        if req.max_forwards is None:
            out.append("no Max-Forwards")
    except ParseError as exc:
        out.append(f"malformed header: {exc}")
    return out


def _authorization_problems(req: Request, challenge: dict[str, str], target_id: str) -> list[str]:
    """The digest answer to our challenge (reference §2.2; RFC 2617 §3.2.2)."""
    try:
        auth = req.auth_params("Authorization")
    except ParseError as exc:
        return [f"Authorization is malformed: {exc}"]
    if auth is None:
        return ["the REGISTER after our 401 has no Authorization"]
    scheme, params = auth
    out: list[str] = []
    if scheme.lower() != "digest":
        out.append(f"Authorization scheme {scheme}, expected Digest")
    if params.get("username") != target_id:
        out.append(f"username {params.get('username')!r}, expected the device ID {target_id}")
    for name in ("realm", "nonce", "opaque"):
        if name in challenge and params.get(name) != challenge[name]:
            out.append(f"{name} {params.get(name)!r}, our challenge said {challenge[name]!r}")
    if params.get("uri") != req.uri:
        out.append(f"uri {params.get('uri')!r} is not the Request-URI {req.uri}")
    response = params.get("response", "")
    if len(response) != 32 or any(c not in "0123456789abcdefABCDEF" for c in response):
        out.append(f"response {response!r} is not 32 hex digits (MD5)")
    algorithm = params.get("algorithm")
    if algorithm is not None and algorithm.upper() != "MD5":
        out.append(f"algorithm {algorithm}, the challenge asked for MD5")
    if "qop" in challenge:
        if params.get("qop") != "auth":
            out.append(f"qop {params.get('qop')!r}: the challenge offered qop=auth")
        if not params.get("cnonce") or len(params.get("nc", "")) != 8:
            out.append("qop=auth without cnonce or an 8-digit nc")
    return out


Exchange = tuple[float, Request, Response]


def _flows(entries: list[Exchange]) -> list[list[Exchange]]:
    """REGISTER exchanges grouped into registrations: from an unauthenticated REGISTER (or the
    first of a Call-ID) to its final non-401 answer."""
    flows: list[list[Exchange]] = []
    current: list[Exchange] = []
    for entry in entries:
        req = entry[1]
        if current and (req.call_id != current[0][1].call_id or current[-1][2].status != 401):
            flows.append(current)
            current = []
        current.append(entry)
    if current:
        flows.append(current)
    return flows


def _challenge(resp: Response) -> dict[str, str]:
    found = resp.auth_params("WWW-Authenticate")
    return found[1] if found else {}


def _granted(resp: Response) -> int | None:
    """What a REGISTER 200 grants: the Contact's ``expires`` first, else ``Expires``."""
    for contact in resp.contacts:
        value = contact.param("expires")
        if value and value.isdigit():
            return int(value)
    try:
        return resp.expires
    except ParseError:
        return None


def _response_header_problems(resp: Response, what: str) -> list[str]:
    out = []
    if not resp.to.tag:
        out.append(f"{what} has no To tag")
    via = resp.get_header("Via") or ""
    if ";rport" in via.split(",")[0] and "rport=" not in via.split(",")[0]:
        out.append(f"{what}: the Via's rport has no value (RFC 3581 §4)")
    return out


# -- registration (device side) ---------------------------------------------------------------
@case(
    "A-REG-01",
    "Device side: registration with digest authentication",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_registers(ctx: Context) -> None:
    """Steps: the suite's platform challenged the target's first REGISTER with 401 (digest, MD5,
    qop=auth) when the run started; the target answered it.

    Pass: the unauthenticated REGISTER names the platform's ID in the Request-URI, the target's
    ID in From and To, has a From tag, a Contact, an Expires, a Via branch with z9hG4bK and
    Max-Forwards; the second REGISTER keeps Call-ID and From tag with a higher CSeq and carries
    ``Authorization: Digest`` with the target's ID as username, our realm and nonce, the
    Request-URI as uri, a 32-hex MD5 response (qop=auth with cnonce and nc), and it was
    accepted (200)."""
    h = ctx.harness
    o = ctx.options
    flows = _flows(h.registers_from(h.lower_id))
    good = next(
        (f for f in flows if len(f) >= 2 and f[0][2].status == 401 and f[-1][2].status == 200),
        None,
    )
    ctx.check(
        good is not None,
        "no registration of the target went 401 -> 200",
        seen=[[e[2].status for e in f] for f in flows],
    )
    assert good is not None
    first, second, last = good[0][1], good[1][1], good[-1][2]
    ctx.step(f"REGISTER {first.uri} -> 401, again with Authorization -> {last.status}")
    server = o.suite_platform_id
    fail_problems(ctx, "the first REGISTER", _register_request_problems(first, h.lower_id, server))
    fail_problems(
        ctx,
        "the authenticated REGISTER",
        _register_request_problems(second, h.lower_id, o.suite_platform_id),
    )
    ctx.expect_equal(second.call_id, first.call_id, "Call-ID of the authenticated REGISTER")
    ctx.expect_equal(second.from_.tag, first.from_.tag, "From tag of the authenticated REGISTER")
    ctx.check(
        second.cseq.seq > first.cseq.seq,
        "the authenticated REGISTER must have a higher CSeq",
        expected=f"> {first.cseq.seq}",
        seen=second.cseq.seq,
    )
    fail_problems(
        ctx,
        "the digest answer",
        _authorization_problems(second, _challenge(good[0][2]), h.lower_id),
    )


# -- registration (platform side) -------------------------------------------------------------
@case(
    "A-REG-02",
    "Platform side: REGISTER challenged with digest, then accepted",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def platform_challenges(ctx: Context) -> None:
    """Steps: each suite device registered when the run started: REGISTER without credentials,
    then with the digest answer.

    Pass: the first answer is 401 with ``WWW-Authenticate: Digest`` naming a realm and a nonce
    (algorithm MD5 and qop auth when given), a To tag and the Via's rport filled in; the
    authenticated REGISTER got 200 with a To tag and the granted time (Expires or the Contact's
    expires) above 0."""
    h = ctx.harness
    for dev in h.devices:
        ctx.step(f"{dev.device_id}: answers {[r.status for r in dev.responses[:2]]}")
        ctx.check(
            len(dev.responses) >= 2 and dev.responses[0].status == 401,
            f"{dev.device_id}: an unauthenticated REGISTER must be challenged with 401",
            expected=[401, 200],
            seen=[r.status for r in dev.responses[:2]],
        )
        challenge, accepted = dev.responses[0], dev.responses[1]
        problems = _response_header_problems(challenge, "the 401")
        found = challenge.auth_params("WWW-Authenticate")
        if found is None or found[0].lower() != "digest":
            problems.append("the 401 has no WWW-Authenticate: Digest")
        else:
            params = found[1]
            if not params.get("realm"):
                problems.append("the challenge has no realm")
            if not params.get("nonce"):
                problems.append("the challenge has no nonce")
            if params.get("algorithm", "MD5").upper() != "MD5":
                problems.append(f"algorithm {params['algorithm']} (GB devices answer MD5)")
            qop = params.get("qop")
            if qop is not None and "auth" not in [q.strip() for q in qop.split(",")]:
                problems.append(f"qop {qop!r} does not offer auth")
        fail_problems(ctx, f"{dev.device_id}", problems)
        ctx.expect_equal(accepted.status, 200, f"{dev.device_id}: the authenticated REGISTER")
        problems = _response_header_problems(accepted, "the 200")
        granted = _granted(accepted)
        if granted is None or granted <= 0:
            problems.append(f"the 200 grants no time (Expires {granted})")
        fail_problems(ctx, f"{dev.device_id}", problems)


@case(
    "A-REG-03",
    "Platform side: a wrong password is refused",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def wrong_password(ctx: Context) -> None:
    """Steps: a spare device of the suite registers with a wrong password (answering the 401
    with a digest the password does not give), then sends a keepalive.

    Pass: the registration ends in a refusal (403 or another 4xx, never 200) and the keepalive
    of the refused device is not accepted (non-2xx)."""
    h = ctx.harness
    spare = h.spare_device(1, password=ctx.options.password + "-wrong")
    try:
        resp = await spare.register()
        ctx.step(f"REGISTER with a wrong password: {[r.status for r in spare.responses]}")
        ctx.check(
            400 <= resp.status < 500,
            "a REGISTER with a wrong password must be refused",
            expected="403 Forbidden (or another 4xx)",
            seen=f"{resp.status} {resp.reason}",
        )
        ka = await spare.keepalive()
        ctx.step(f"keepalive from the refused device: {ka.status}")
        ctx.check(
            ka.status >= 300,
            "a keepalive from a device whose registration was refused must not be accepted",
            expected="404 (or another error)",
            seen=f"{ka.status} {ka.reason}",
        )
    finally:
        await h.drop_spare(spare)


@case(
    "A-REG-04",
    "Device side: refresh before expiry, and the 401 on refresh",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1.1",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_refreshes(ctx: Context) -> None:
    """Steps: the suite's platform forgets the target (its next keepalive gets 404: the case
    waits up to 3 of its heartbeat periods for it to register again) and grants the
    registration that follows only ``--grant-expires`` seconds (default 60), whatever the
    target asked; it then forgets every nonce it issued, so the refresh is challenged again.

    Pass: the target registers again; before the granted time runs out (RFC 3261 §10.2.4: the
    registrar's grant binds the client) it sends the refresh, same Call-ID and From tag and a
    higher CSeq; the refresh is challenged (401) and the target answers the new challenge with
    a correct digest (200). A target that keeps to the lifetime it asked for fails, with what
    it did instead."""
    h = ctx.harness
    platform = h.need_platform()
    grant = ctx.options.grant_expires
    timing = ctx.keepalive_timing()
    t0 = time.monotonic()

    def ok_after(since: float) -> tuple[float, Request, Response] | None:
        return next(
            (e for e in h.registers_from(h.lower_id) if e[0] > since and e[2].status == 200),
            None,
        )

    platform.grant_expires = grant
    platform.restart()
    try:
        ctx.step("platform forgot the target; it must register again after a keepalive 404 "
                 f"(waiting up to {timing.wait():g} s, {timing.describe()})")  # fmt: skip
        await ctx.wait_for(lambda: ok_after(t0) is not None, timing.wait(),
                           "the target to register again", extend=True)  # fmt: skip
        first = ok_after(t0)
        assert first is not None
        platform.forget_nonces()
        platform.grant_expires = None  # the refresh gets the usual time again
        asked = first[1].expires
        ctx.step(f"registered for {grant} s (asked {asked} s; CSeq {first[1].cseq.seq}); "
                 "waiting for a refresh")  # fmt: skip

        def refresh(after: float, ok: bool) -> tuple[float, Request, Response] | None:
            """The first REGISTER (or the first accepted one) of the same Call-ID."""
            return next(
                (e for e in h.registers_from(h.lower_id)
                 if e[0] > after and e[1].call_id == first[1].call_id
                 and (e[2].status == 200 or not ok)),
                None,
            )  # fmt: skip

        # In time: the refresh's first REGISTER arrives before the granted time is over.
        wait = refresh_wait(grant) - (time.monotonic() - first[0])
        ctx.allow(wait)
        with waiting(f"a refresh of the {grant} s registration", wait):
            await until(lambda: refresh(first[0], ok=False) is not None, wait)
        began = refresh(first[0], ok=False)
        if began is None or began[0] > first[0] + grant:
            ctx.fail(
                f"the target did not refresh before the granted {grant} s ran out "
                f"(RFC 3261 §10.2.4)",
                expected=f"a REGISTER with Call-ID {first[1].call_id} within {grant} s",
                seen=_what_it_did(h, first, asked),
            )
        await ctx.wait_for(lambda: refresh(first[0], ok=True) is not None, 10.0,
                           "the refresh to be accepted")  # fmt: skip
        done = refresh(first[0], ok=True)
        assert done is not None
    finally:
        platform.grant_expires = None
    flow = [e for e in h.registers_from(h.lower_id)
            if first[0] < e[0] <= done[0] and e[1].call_id == first[1].call_id]  # fmt: skip
    ctx.step(f"refresh after {done[0] - first[0]:.1f} s: {[e[2].status for e in flow]} "
             f"(CSeq {[e[1].cseq.seq for e in flow]})")  # fmt: skip
    ctx.expect_equal(done[1].from_.tag, first[1].from_.tag, "From tag of the refresh")
    ctx.check(
        flow[0][1].cseq.seq > first[1].cseq.seq,
        "the refresh must have a higher CSeq than the registration it refreshes",
        expected=f"> {first[1].cseq.seq}",
        seen=flow[0][1].cseq.seq,
    )
    challenged = [e for e in flow if e[2].status == 401]
    ctx.check(bool(challenged), "the refresh was not challenged (the suite forgot its nonces)")
    after = flow[flow.index(challenged[-1]) + 1][1]
    fail_problems(
        ctx, "the answer to the 401 on refresh",
        _authorization_problems(after, _challenge(challenged[-1][2]), h.lower_id),
    )  # fmt: skip


def _what_it_did(h: Any, first: tuple[float, Request, Response], asked: int | None) -> str:
    """What a target did after its registration of ``first`` was granted less than it asked:
    its keepalives and REGISTERs since, with their answers and times."""
    t = first[0]
    kas = [k for k in h.keepalives_from(h.lower_id) if k[0] > t]
    regs = [e for e in h.registers_from(h.lower_id) if e[0] > t]
    parts = [f"asked {asked} s" if asked is not None else "asked no Expires"]
    if kas:
        answers = ", ".join(f"+{k[0] - t:.0f} s {k[4] or 'unanswered'}" for k in kas[-6:])
        parts.append(f"{len(kas)} keepalives ({answers})")
    else:
        parts.append("no keepalive")
    for e in regs[:4]:
        same = "same" if e[1].call_id == first[1].call_id else "new"
        parts.append(f"REGISTER at +{e[0] - t:.1f} s ({same} Call-ID) -> {e[2].status}")
    if not regs:
        parts.append("no REGISTER: it held on to the lifetime it asked for")
    return "; ".join(parts)


@case(
    "A-REG-05",
    "Platform side: refresh, challenged again",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1.1",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def platform_refresh(ctx: Context) -> None:
    """Steps: a suite device refreshes its registration (same Call-ID and From tag, CSeq + 1,
    without credentials, as devices do), answers the challenge, then sends a keepalive.

    Pass: the unauthenticated refresh is challenged with 401 (accepting a REGISTER without
    credentials would let anyone move the device's binding), the authenticated one gets 200
    with the granted time, and the device is still registered (keepalive 200)."""
    h = ctx.harness
    dev = h.devices[0]
    async with h.manual(dev):
        before = len(dev.responses)
        resp = await dev.register()
        statuses = [r.status for r in dev.responses[before:]]
        ctx.step(f"refresh: {statuses}")
        ctx.check(
            statuses[0] == 401,
            "a REGISTER without credentials (the refresh) must be challenged",
            expected=401,
            seen=statuses[0],
        )
        ctx.expect_equal(resp.status, 200, "the authenticated refresh")
        granted = _granted(resp)
        ctx.check(granted is not None and granted > 0, "the 200 grants no time", seen=granted)
        ka = await dev.keepalive()
        ctx.expect_equal(ka.status, 200, "keepalive after the refresh")


@case(
    "A-REG-06",
    "Platform side: unregistration",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def unregistration(ctx: Context) -> None:
    """Steps: the last suite device unregisters (REGISTER Expires: 0, with the digest steps),
    sends a keepalive, and (gateway) the upper platform reads the catalog; then the device
    registers again.

    Pass: the unregistration is challenged and then answered 200; the keepalive that follows is
    refused (404 or another error); a gateway shows the device and its channels OFF to its
    upper and ON again once the device is back."""
    h = ctx.harness
    dev = h.devices[-1]
    timeout = min(10.0, ctx.options.case_timeout / 4)
    async with h.manual(dev):
        before = len(dev.responses)
        resp = await dev.unregister()
        statuses = [r.status for r in dev.responses[before:]]
        ctx.step(f"REGISTER Expires: 0 -> {statuses}")
        try:
            ctx.check(statuses[0] == 401, "the unregistration must be authenticated too",
                      expected=401, seen=statuses[0])  # fmt: skip
            ctx.expect_equal(resp.status, 200, "the authenticated unregistration")
            ka = await dev.keepalive()
            ctx.step(f"keepalive after unregistering: {ka.status}")
            ctx.check(ka.status >= 300, "a keepalive after unregistration must be refused",
                      expected="404", seen=f"{ka.status} {ka.reason}")  # fmt: skip
            if h.role == "gateway":
                await _wait_status(ctx, dev.device_id, [dev.device_id, *dev.channel_ids()],
                                   "OFF", timeout)  # fmt: skip
        finally:
            again = await dev.register()
        ctx.expect_equal(again.status, 200, "registering again")
        if h.role == "gateway":
            await _wait_status(ctx, dev.device_id, [dev.device_id, *dev.channel_ids()], "ON",
                               timeout)  # fmt: skip


async def _wait_status(ctx: Context, who: str, ids: list[str], status: str, timeout: float) -> None:
    """Gateway: until the upper's catalog shows every one of ``ids`` with ``status``."""
    h = ctx.harness
    last: dict[str, str | None] = {}

    async def poll() -> bool:
        res = await h.catalog(timeout=5.0, idle=1.0)
        last.clear()
        last.update({i.device_id: i.status for i in res.items})
        return all(last.get(i) == status for i in ids)

    loop_end = time.monotonic() + timeout
    while not await poll():
        if time.monotonic() >= loop_end:
            ctx.fail(
                f"the upper platform does not see {who} {status} after {timeout:g} s",
                expected={i: status for i in ids},
                seen={i: last.get(i, "(not listed)") for i in ids},
            )
        await until(lambda: False, 0.3)
    ctx.step(f"upper sees {who} and its {len(ids) - 1} items {status}")


@case(
    "A-REG-07",
    "Platform side: an expired registration is detected",
    grade="A",
    clause_2016="9.1",
    clause_2022="9.1.1",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def expiry_detected(ctx: Context) -> None:
    """Steps: a spare device registers asking for 2 s, keeps quiet until the time the platform
    granted has passed (a platform's minimum, such as 60 s, included), then sends a keepalive.

    Pass: the registration is accepted and, once it has expired, the keepalive is refused (404
    or another error: the platform no longer holds the device as registered). Skipped when the
    platform grants more than :data:`LONGEST_GRANT_WAITED` seconds."""
    h = ctx.harness
    spare = h.spare_device(2, expires=2)
    try:
        resp = await spare.register()
        ctx.expect_equal(resp.status, 200, "REGISTER asking for 2 s")
        granted = _granted(resp) or 2
        ctx.step(f"granted {granted} s")
        if granted > LONGEST_GRANT_WAITED:
            ctx.skip(f"the platform grants {granted} s to a REGISTER asking for 2 s (the case "
                     f"waits out at most {LONGEST_GRANT_WAITED} s)")  # fmt: skip
        quiet = granted + 1.5
        ctx.allow(quiet)
        with waiting(f"the granted {granted} s to pass", quiet):
            await until(lambda: False, quiet, step=0.5)
        ka = await spare.keepalive()
        ctx.step(f"keepalive {granted + 1.5:g} s later: {ka.status}")
        ctx.check(
            ka.status >= 300,
            "a keepalive after the registration expired must be refused",
            expected="404 (or another error)",
            seen=f"{ka.status} {ka.reason}",
        )
    finally:
        spare.registered = False
        await h.drop_spare(spare)


# -- time sync ------------------------------------------------------------------------------
@case(
    "A-DATE-01",
    "Platform side: the REGISTER 200 carries Date in the GB format",
    grade="A",
    clause_2016="9.10",
    clause_2022="9.10",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def register_date(ctx: Context) -> None:
    """Steps: a suite device registers again (refresh with the digest steps) and reads the
    200 OK.

    Pass: the 200 carries ``Date: yyyy-MM-ddTHH:mm:ss.SSS`` (milliseconds optional; not the
    RFC 1123 form), a real time whose clock agrees with ours within 10 s in some time zone
    (Beijing time is expected; the zone is not written)."""
    h = ctx.harness
    dev = h.devices[0]
    async with h.manual(dev):
        sent = time.time()
        resp = await dev.register()
    ctx.expect_equal(resp.status, 200, "the REGISTER")
    value = resp.get_header("Date")
    ctx.step(f"Date: {value}")
    fail_problems(ctx, "the 200 OK to REGISTER", date_problems(value, sent))


@case(
    "A-DATE-02",
    "Device side: the clock follows the platform's Date",
    grade="A",
    clause_2016="9.10",
    clause_2022="9.10",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_clock(ctx: Context) -> None:
    """Steps: after registering (our 200 carried ``Date``), the target is asked DeviceStatus.

    Pass: ``DeviceTime`` is ``yyyy-MM-ddTHH:mm:ss`` and agrees with our clock within 10 s (in
    some time zone). Skipped when the answer has no DeviceTime (it is optional)."""
    from conformance.suite.cases.common import GB_TIME, clock_problem, parse_gb_time, query_one
    from gateway.manscdp.messages import DeviceStatusQuery

    h = ctx.harness
    answer, _ = await query_one(ctx, DeviceStatusQuery(sn=0, device_id=h.lower_id), "DeviceStatus")
    value = getattr(answer, "device_time", None)
    if not value:
        ctx.skip("the DeviceStatus answer has no DeviceTime")
    ctx.step(f"DeviceTime {value}")
    ctx.check(bool(GB_TIME.match(value.strip())), "DeviceTime is not yyyy-MM-ddTHH:mm:ss",
              seen=value)  # fmt: skip
    when = parse_gb_time(value.strip())
    ctx.check(when is not None, "DeviceTime is not a real time", seen=value)
    assert when is not None
    problem = clock_problem(when)
    ctx.check(problem is None, "the device's clock does not follow the platform's", seen=problem)


# -- keepalive ------------------------------------------------------------------------------
@case(
    "A-KA-01",
    "Device side: keepalive",
    grade="A",
    clause_2016="9.6",
    clause_2022="9.6",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_keepalive(ctx: Context) -> None:
    """Steps: the suite's platform waits for the target's keepalives (since it registered; at
    most 3 heartbeat periods and a margin: the period of ``--keepalive-interval``, else learned
    from its keepalives, else GB/T 28181's 60 s).

    Pass: a MESSAGE arrives from the target's ID to the platform's ID with
    ``Content-Type: Application/MANSCDP+xml`` and a ``Notify`` body: CmdType Keepalive, SN,
    DeviceID = the target's own ID, Status OK or ERROR."""
    h = ctx.harness
    o = ctx.options
    timing = ctx.keepalive_timing()
    if not h.keepalives_from(h.lower_id):
        ctx.step(f"no keepalive yet; waiting up to {timing.wait():g} s ({timing.describe()})")
    await ctx.wait_for(lambda: bool(h.keepalives_from(h.lower_id)), timing.wait(),
                       f"a keepalive from {h.lower_id}", extend=True)  # fmt: skip
    seen = h.keepalives_from(h.lower_id)
    _, _, req, msg, status = seen[-1]
    ctx.step(f"{len(seen)} keepalives; the last answered {status}")
    problems: list[str] = []
    if req.request_uri.user != o.suite_platform_id:
        problems.append(f"Request-URI {req.uri} does not name the platform {o.suite_platform_id}")
    if req.to.uri.user != o.suite_platform_id:
        problems.append(f"To {req.to.uri} does not name the platform")
    if not content_type_ok(req):
        problems.append(f"Content-Type {req.get_header('Content-Type')!r}")
    if msg.device_id != h.lower_id:
        problems.append(f"DeviceID {msg.device_id}: a keepalive carries the sender's own ID")
    if msg.status not in ("OK", "ERROR"):
        problems.append(f"Status {msg.status!r} (OK or ERROR)")
    if msg.sn <= 0:
        problems.append(f"SN {msg.sn}")
    if len(seen) >= 2 and seen[-1][3].sn == seen[-2][3].sn:
        problems.append("two keepalives with the same SN")
    fail_problems(ctx, "the keepalive", problems)


@case(
    "A-KA-02",
    "Platform side: keepalives answered, strangers refused",
    grade="A",
    clause_2016="9.6",
    clause_2022="9.6",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def platform_keepalive(ctx: Context) -> None:
    """Steps: a registered suite device sends a keepalive; a device that never registered
    sends one too.

    Pass: the registered device's keepalive gets 200 without a body; the stranger's is refused
    (404 or another error) so that it knows to register."""
    h = ctx.harness
    dev = h.devices[0]
    resp = await dev.keepalive()
    ctx.step(f"keepalive of {dev.device_id}: {resp.status}")
    ctx.expect_equal(resp.status, 200, "keepalive of a registered device")
    ctx.check(not resp.body.strip(), "the 200 to a keepalive carries a body", seen=resp.body[:80])
    stranger = h.spare_device(3)
    try:
        other = await stranger.keepalive()
    finally:
        await h.drop_spare(stranger)
    ctx.step(f"keepalive of unregistered {stranger.device_id}: {other.status}")
    ctx.check(other.status >= 300, "a keepalive from an unregistered device must be refused",
              expected="404", seen=f"{other.status} {other.reason}")  # fmt: skip


# -- catalog --------------------------------------------------------------------------------
@case(
    "A-CAT-01",
    "Device side: catalog query answered completely, every field right",
    grade="A",
    clause_2016="9.5, Annex N",
    clause_2022="9.5, Annex M",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def catalog_complete(ctx: Context) -> None:
    """Steps: the suite's platform sends ``Query/Catalog`` for the target's ID and collects
    the Response MESSAGEs (one item per message or batched; UDP or TCP as the run is).

    Pass: 200 to the query; every part has our SN, the queried DeviceID and the same SumNum,
    ``DeviceList Num`` equal to its items; no item twice; SumNum distinct items in all; every
    item carries the fields the standard makes mandatory for its kind, with valid values. Below
    a gateway: every item of every suite device is there with every field as the device sent
    it, and nothing unknown is added."""
    h = ctx.harness
    res = await h.catalog()
    ctx.step(
        f"{len(res.responses)} Response MESSAGEs, SumNum {res.sum_num}, "
        f"{len(res.items)} distinct items, over {res.transport}"
    )
    fail_problems(ctx, "the catalog answer", multi_problems(res, "DeviceList", h.lower_id))
    present = item_elements(res.raw)
    problems = [
        p
        for item in res.items
        for p in item_problems(item, ctx.options.edition, present.get(item.device_id))
    ]
    fail_problems(ctx, "catalog items", problems)
    if h.role == "gateway":
        _compare_catalog(ctx, res.items)


def _compare_catalog(ctx: Context, items: list[CatalogItem]) -> None:
    """Below a gateway: what the suite devices sent, field by field."""
    h = ctx.harness
    seen = {i.device_id: i for i in items}
    missing: list[str] = []
    different: list[str] = []
    known = {ctx.options.target_id}
    for dev in (*h.devices, *h.spares):
        known.add(dev.device_id)
        sent = list(dev.catalog_items())
        known.update(i.device_id for i in sent)
        if dev not in h.devices:
            continue
        if dev.device_id not in seen:
            missing.append(dev.device_id)
        for item in sent:
            got = seen.get(item.device_id)
            if got is None:
                missing.append(item.device_id)
                continue
            # A relay may re-parent the tree's top nodes to itself (reference §7.2).
            ignore = ["parent_id"] if item_kind(item.device_id) == "business_group" else []
            diff = item_differences(item, got, ignore)
            if diff:
                different.append(f"{item.device_id}: " + ", ".join(diff[:4]))
    ctx.check(not missing, f"items missing at the upper: {short(missing)}",
              expected="every item the devices reported",
              seen=f"{len(missing)} missing")  # fmt: skip
    ctx.check(not different, "items changed on the way up: " + "; ".join(different[:3]),
              seen=f"{len(different)} items differ")  # fmt: skip
    extra = [i for i in seen if i not in known and item_kind(i) != "region"]
    ctx.check(not extra, f"items nobody reported: {short(extra)}")


@case(
    "A-CAT-02",
    "Device side: catalog MESSAGEs over UDP fit the path MTU",
    grade="A",
    clause_2016="9.5, Annex N",
    clause_2022="9.5, Annex M",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def catalog_mtu(ctx: Context) -> None:
    """Steps: the suite's platform reads the catalog and measures each Response MESSAGE that
    arrived over UDP (as received, whatever its Via says).

    Pass: no MESSAGE over UDP is larger than 1300 bytes (RFC 3261 §18.1.1: a request within
    200 bytes of the path MTU, or above 1300 bytes when it is unknown, goes over TCP; 2022
    Annex M: beyond the MTU, TCP; fragments are lost behind NAT). Skipped when the target is
    reached over TCP."""
    h = ctx.harness
    res = await h.catalog()
    if res.transport != "udp":
        ctx.skip(f"the target is reached over {res.transport}")
    ctx.check(bool(res.raw), "no catalog Response MESSAGE came", seen=res.status)
    over_udp = [len(r) for r, t in zip(res.raw, res.arrived_over, strict=True) if t == "udp"]
    ctx.step(
        f"{len(res.raw)} MESSAGEs, {len(over_udp)} over UDP, largest of those "
        f"{max(over_udp, default=0)} bytes"
    )
    big = [s for s in over_udp if s > MAX_UDP_REQUEST]
    ctx.check(not big, f"{len(big)} catalog MESSAGEs over UDP exceed {MAX_UDP_REQUEST} bytes",
              expected=f"<= {MAX_UDP_REQUEST}", seen=max(over_udp, default=0))  # fmt: skip


@case(
    "A-CAT-03",
    "Platform side: the catalog is read, one item per message and batched",
    grade="A",
    clause_2016="9.5, Annex N",
    clause_2022="9.5, Annex M",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def platform_reads_catalog(ctx: Context) -> None:
    """Steps: the first suite device registers afresh twice, answering the target's catalog
    query first with one item per MESSAGE, then with every item in one MESSAGE.

    Pass: each time the target sends ``Query/Catalog`` (its own SN, the device's ID) and
    answers every Response MESSAGE 200 (serially, 2022 Annex M); below a gateway, the upper
    then sees every item."""
    h = ctx.harness
    dev = h.devices[0]
    kept = dev.items_per_message
    timeout = min(10.0, ctx.options.case_timeout / 4)
    try:
        for label, per in (("one item per MESSAGE", 1), ("one batch", dev.catalog_size())):
            dev.items_per_message = per
            try:
                q = await h.resync(dev, timeout)
            except TimeoutError as exc:
                ctx.fail(f"{label}: {exc}")
            ctx.step(f"{label}: the target queried SN {q.sn}; every part answered 200")
            ctx.expect_equal(q.device_id, dev.device_id, "DeviceID of the target's Catalog query")
            bad = [s for c, sn, s in dev.answer_statuses if c == "Catalog" and sn == q.sn
                   and s != 200]  # fmt: skip
            ctx.check(not bad, f"{label}: parts of the answer were not accepted", seen=bad)
            if h.role == "gateway":
                wanted = {i.device_id for i in dev.catalog_items()}
                res = await h.catalog(timeout=5.0, idle=1.0)
                missing = wanted - {i.device_id for i in res.items}
                ctx.check(not missing, f"{label}: the upper does not see {short(sorted(missing))}")
    finally:
        dev.items_per_message = kept


# -- live view ------------------------------------------------------------------------------
async def _live(ctx: Context, transport: str) -> None:
    h = ctx.harness
    if transport not in ctx.options.media_transports:
        ctx.skip(f"{transport} media is not among the run's media transports")
    channel = h.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    below = h.device_for(channel) if h.role == "gateway" else None
    before = len(below[0].invites) if below else 0
    call = await invite(ctx, channel, transport=transport)
    try:
        ctx.step(f"INVITE {channel} over {transport}: 200, y={call.ssrc}")
        fail_problems(ctx, "the answer", answer_problems(call, "Play"))
        # The suite's own offer: a problem here is a suite bug (an error), not the target's.
        assert not ssrc_problems(
            call.offered_ssrc, history=False, domain=ctx.options.suite_domain
        ), f"the suite offered a bad y={call.offered_ssrc}"
        got = await frames(ctx, call, FRAMES_WANTED, f"live view over {transport}")
        r = call.receiver
        ctx.record_media(frames_decoded=got, ssrc=call.ssrc, transport=transport,
                         packets=r.packets, lost=r.lost)  # fmt: skip
        ctx.step(f"{got} frames decoded, RTP SSRCs {sorted(r.ssrcs)}")
        ctx.check(r.ssrcs == {call.ssrc_int}, "the RTP SSRC is not the answer's y=",
                  expected=call.ssrc_int, seen=sorted(r.ssrcs))  # fmt: skip
        ctx.check(r.decode_errors == 0, f"{r.decode_errors} frames failed to decode")
        if below is not None:
            _check_device_leg(ctx, below[0], below[1], before, "Play")
    finally:
        await end_call(call)
    if below is not None:
        dev, local = below
        sessions = [s for s in list(dev.media_sessions.values())[-1:] if s.channel_id == local]
        ctx.check(bool(sessions), "the device below saw no session for the channel")
        ok = await until(lambda: all(s.ended for s in sessions), 5.0)
        ctx.check(ok, "after our BYE the gateway did not end the device's session")


def _check_device_leg(ctx: Context, dev: Any, local: str, before: int, kind: str) -> None:
    """Below a gateway: the INVITE the gateway sent to the device (reference §6.2, §6.4,
    §6.9)."""
    o = ctx.options
    ctx.check(len(dev.invites) > before, "the gateway did not INVITE the device")
    session = list(dev.media_sessions.values())[-1]
    ctx.expect_equal(session.channel_id, local, "channel the gateway INVITEd")
    history = kind != "Play"
    problems = offer_problems(session.offer, kind)
    problems += ssrc_problems(session.offer.ssrc, history=history, domain=o.target_domain)
    subject = session.subject or ""
    parts = [p.split(":") for p in subject.split(",")]
    if len(parts) != 2 or any(len(p) != 2 for p in parts):
        problems.append(f"Subject {subject!r} is not <sender>:<serial>,<receiver>:<serial>")
    else:
        (sender, serial), (receiver, _) = parts
        if sender != local:
            problems.append(f"Subject sender {sender}, expected the channel {local}")
        if receiver != o.target_id:
            problems.append(f"Subject receiver {receiver}, expected the gateway {o.target_id}")
        if not serial or serial[0] != ("1" if history else "0") or len(serial) > 20:
            problems.append(f"Subject sender serial {serial!r} (starts 0 live / 1 history)")
    fail_problems(ctx, "the gateway's INVITE to the device", problems)
    ctx.step(f"device leg: y={session.offer.ssrc}, Subject {subject}")


for _n, _t in ((1, "udp"), (2, "tcp-passive"), (3, "tcp-active")):

    def _make(transport: str) -> Any:
        async def live_view(ctx: Context) -> None:
            await _live(ctx, transport)

        live_view.__doc__ = f"""Steps: the suite's platform INVITEs the first video channel for
        live view (``s=Play``, ``y=`` from our domain) with media over {transport} (our role),
        ACKs, decodes what arrives, then BYEs.

        Pass: 200 OK with an SDP answer: ``s=Play``, ``c=``, ``m=video`` (TCP/RTP/AVP over TCP
        with the opposite ``a=setup``), ``a=sendonly``, a standard payload, our ``y=`` echoed;
        {FRAMES_WANTED} frames decode without error; every RTP packet carries the SSRC of
        ``y=``. Below a gateway: its INVITE to the device has ``s=Play``, ``a=recvonly``, PS,
        a ``y=`` of its own domain (10 digits, first 0, digits 2-6 = domain digits 4-8) and a
        ``Subject`` channel:serial,gateway:serial; our BYE ends the device's session."""
        live_view.__qualname__ = live_view.__name__ = f"live_view_{transport.replace('-', '_')}"
        return live_view

    case(
        f"A-LIVE-0{_n}",
        f"Device side: live view, media over {_t}",
        grade="A",
        clause_2016="9.2, Annexes F, L, M",
        clause_2022="9.2, Annexes D, G, L",
        roles=TARGET_DEVICE,
        editions=BOTH,
        media=True,
    )(_make(_t))


@case(
    "A-LIVE-04",
    "Gateway: the SSRC is chosen by the called domain when the offer has none",
    grade="A",
    clause_2016="9.2, Annex F",
    clause_2022="9.2, Annex G",
    roles=("gateway",),
    editions=BOTH,
    media=True,
)
async def ssrc_by_callee(ctx: Context) -> None:
    """Steps: the suite's platform (another domain) INVITEs a channel with no ``y=``.

    Pass: the 200's SDP carries a ``y=`` the gateway made for its own domain (10 digits, first
    digit 0 for live, digits 2-6 = digits 4-8 of its domain) and the RTP carries that SSRC."""
    h = ctx.harness
    transport = ctx.options.media_transports[0] if ctx.options.media_transports else "udp"
    channel = h.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    call = await invite(ctx, channel, transport=transport, ssrc=None)
    try:
        answer = call.answer
        ctx.step(f"answered y={answer.ssrc if answer else None}")
        fail_problems(
            ctx,
            "the answer's y=",
            ssrc_problems(
                answer.ssrc if answer else None, history=False, domain=ctx.options.target_domain
            ),
        )
        got = await frames(ctx, call, 10, "live view with the callee's SSRC")
        ctx.record_media(frames_decoded=got, ssrc=call.ssrc, transport=transport)
        ctx.check(call.receiver.ssrcs == {call.ssrc_int}, "the RTP SSRC is not the answer's y=",
                  expected=call.ssrc_int, seen=sorted(call.receiver.ssrcs))  # fmt: skip
    finally:
        await end_call(call)


# -- PTZ ------------------------------------------------------------------------------------
PTZ_STEPS: tuple[tuple[str, str], ...] = tuple(
    (label, cmd.encode())
    for label, cmd in (
        ("up", ptz_move(tilt=1)),
        ("down", ptz_move(tilt=-1)),
        ("left", ptz_move(pan=-1)),
        ("right", ptz_move(pan=1)),
        ("up-left", ptz_move(pan=-1, tilt=1)),
        ("down-right", ptz_move(pan=1, tilt=-1)),
        ("zoom in", ptz_move(zoom=1)),
        ("zoom out", ptz_move(zoom=-1)),
        ("stop", ptz_stop()),
    )
)


@case(
    "A-PTZ-01",
    "Device side: PTZ in six directions, zoom and stop, by channel ID",
    grade="A",
    clause_2016="9.3, A.3",
    clause_2022="9.3, A.3",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def ptz_commands(ctx: Context) -> None:
    """Steps: the suite's platform sends ``Control/DeviceControl`` with ``PTZCmd`` to the first
    video channel's 20-digit ID: up, down, left, right, up-left, down-right, zoom in, zoom out,
    stop (Appendix A.3 commands, checksum = sum of bytes 1-7 mod 256).

    Pass: each MESSAGE is answered 200 (PTZ has no application answer). Below a gateway: each
    command reaches the device unchanged, addressed to the channel, with a valid checksum."""
    h = ctx.harness
    channel = h.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    below = h.device_for(channel) if h.role == "gateway" else None
    from conformance.peers.platform import RequestFailed

    for label, cmd in PTZ_STEPS:
        before = len(below[0].ptz_commands) if below else 0
        try:
            await h.need_platform().ptz(h.lower_id, channel, cmd)
        except RequestFailed as exc:
            seen = refusal_line(ctx, exc.status) if exc.status else None
            ctx.fail(
                f"a correct PTZCmd {cmd} ({label}; checksum {cmd[14:]} = bytes 1-7 summed mod "
                f"256, Appendix A.3) to {channel} was refused",
                expected="200 OK",
                seen=seen or (f"{exc.status} {exc.reason}" if exc.status else "no answer"),
            )
        ctx.step(f"{label}: {cmd} -> 200")
        if below is None:
            continue
        dev, local = below
        arrived = await until(lambda d=dev, b=before: len(d.ptz_commands) > b, 5.0)
        ctx.check(arrived, f"PTZCmd {cmd} ({label}) did not reach the device below")
        got = dev.ptz_commands[before]
        ctx.expect_equal(got.upper(), cmd, f"PTZCmd at the device ({label})")
        ctx.expect_equal(dev.controls[-1].device_id, local, "DeviceID of the PTZ at the device")
        try:
            decode_ptz(got)
        except Exception as exc:
            ctx.fail(f"PTZCmd {got} at the device is not valid: {exc}")


@case(
    "A-PTZ-02",
    "Device side: a PTZCmd with a wrong checksum is refused or ignored",
    grade="A",
    clause_2016="9.3, A.3",
    clause_2022="9.3, A.3",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def ptz_bad_checksum(ctx: Context) -> None:
    """Steps: the suite's platform sends "set preset 99" with byte 8 (the checksum) off by one,
    then asks PresetQuery (below a gateway, also looks at the device).

    Pass: the control is refused (4xx) or accepted and ignored: preset 99 does not appear.
    Skipped (after the control) when the target answers no PresetQuery."""
    h = ctx.harness
    channel = h.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    good = preset_set(99).encode()
    bad = good[:14] + f"{(int(good[14:], 16) + 1) & 0xFF:02X}"
    res = await h.need_platform().query(
        h.lower_id, DeviceControl(sn=0, device_id=channel, ptz_cmd=bad), timeout=5.0, idle=0.1
    )
    ctx.step(f"PTZCmd {bad} (checksum should be {good[14:]}): {res.status}")
    ctx.check(res.status != 0, "the MESSAGE with a bad PTZCmd got no answer")
    below = h.device_for(channel) if h.role == "gateway" else None
    if below is not None:
        await until(lambda: False, 0.3)
        ids = [p.preset_id for p in below[0].presets]
        ctx.check(99 not in ids, "the device below obeyed a PTZCmd with a wrong checksum")
    q = await h.need_platform().query(h.lower_id, PresetQuery(sn=0, device_id=channel),
                                      timeout=5.0, idle=1.0)  # fmt: skip
    if not q.responses:
        ctx.skip("the target answers no PresetQuery: cannot tell whether the command was obeyed")
    ids = [p.preset_id for r in q.responses for p in getattr(r, "items", ())]
    ctx.step(f"presets now {ids}")
    ctx.check(99 not in ids, "a PTZCmd with a wrong checksum was obeyed (preset 99 exists)")
