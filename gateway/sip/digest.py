"""HTTP Digest authentication for SIP (RFC 2617 with RFC 3261 §22), MD5 only.

Server side: challenges with or without ``qop="auth"`` and verifies answers in either form
(both occur among GB/T 28181 devices). Nonces are stateless:
``<timestamp><HMAC(secret, timestamp, bound host)>``
in hex, so any nonce the gateway issued can be checked without remembering it, and an expired one
gets ``stale=true``. A nonce is bound to the host (the source IP, not the port) that asked for it:
an answer on it from any other host is ``UNKNOWN_NONCE`` (a fresh challenge), so a guesser cannot
fetch challenges at its own address and spend them with a forged source address, and wrong answers
count against the address that really fetched the challenge. The only state is the highest ``nc``
seen per nonce (and, for answers without qop, that the nonce was used), kept while the nonce lives,
to refuse replays; and the nonces a wrong answer used up. A failed answer burns its nonce, so each
password guess costs a fresh challenge, and the nonce's state (used up, replayed, stale) is always
decided before the password is looked at: no answer tells a guesser more than "wrong password".
That state is bounded (``max_nonces``): when the table is full the oldest entry goes, and every
nonce issued up to the one forgotten is refused as stale from then on, so forgetting never reopens
a nonce.

Only MD5 with qop ``auth`` or none is implemented (what GB/T 28181 devices use; RFC 8760's
SHA-256 is optional). :meth:`DigestServer.supports` tells the caller when an answer uses
another scheme, algorithm or qop, so it can re-challenge (RFC 3261 §22.2).

Client side (the uplink registers to upper platforms): answer a 401/407 challenge.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def compute_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value of RFC 2617 §3.2.2.1 (MD5, qop absent or ``auth``)."""
    ha1 = md5_hex(f"{username}:{realm}:{password}")
    ha2 = md5_hex(f"{method}:{uri}")
    if qop:
        return md5_hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5_hex(f"{ha1}:{nonce}:{ha2}")


class Verdict(enum.Enum):
    OK = "ok"
    BAD_PASSWORD = "bad password"
    STALE = "stale nonce"
    UNKNOWN_NONCE = "nonce not issued here"
    REPLAY = "nonce count replayed"
    MALFORMED = "malformed credentials"
    UNSUPPORTED = "unsupported algorithm or qop"
    USED_UP = "nonce used up by a failed answer"
    WRONG_REALM = "credentials for another realm"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The parameters of a ``Digest`` Authorization header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def from_params(cls, scheme: str, params: dict[str, str]) -> Credentials | None:
        """``None`` unless the scheme is Digest and the mandatory parameters are present."""
        if scheme.lower() != "digest":
            return None
        try:
            return cls(
                username=params["username"],
                realm=params["realm"],
                nonce=params["nonce"],
                uri=params["uri"],
                response=params["response"],
                algorithm=params.get("algorithm"),
                qop=params.get("qop"),
                nc=params.get("nc"),
                cnonce=params.get("cnonce"),
                opaque=params.get("opaque"),
            )
        except KeyError:
            return None


# The ``_nc_seen`` value of a nonce that a wrong answer used up.
_BURNED = -1


class DigestServer:
    """Issues challenges and verifies answers for one realm.

    ``clock`` returns seconds (injected for tests). ``nonce_ttl`` bounds how long an issued nonce
    is accepted; after that the client gets ``stale=true`` and retries without asking the user.
    ``max_nonces`` bounds the nonces remembered (used ones, for replay; burned ones).
    """

    def __init__(
        self,
        realm: str,
        *,
        qop: bool = True,
        nonce_ttl: float = 300.0,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
    ) -> None:
        self.realm = realm
        self.qop = qop
        self.nonce_ttl = nonce_ttl
        self.max_nonces = max_nonces
        self._secret = secret if secret is not None else os.urandom(32)
        self._clock = clock
        # nonce -> highest nc answered (0 without qop), or _BURNED; in insertion order.
        self._nc_seen: dict[str, int] = {}
        # Nonces stamped at or before this (the newest one forgotten for room) are stale.
        self._floor = ""
        self._last_prune = clock()

    def _mac(self, stamp: str, bind: str) -> str:
        # The stamp is fixed-length hex, so "stamp|host" cannot be read two ways.
        data = f"{stamp}|{bind}".encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:24]

    def make_nonce(self, *, bind: str = "") -> str:
        """A fresh nonce, valid only for answers from host ``bind`` (the source IP the challenge
        goes to; ``""`` binds to no host). RFC 2617 §3.2.1 notes the client's IP in the nonce
        limits its use to the client that got it, at the cost of clients whose requests leave
        from several addresses (proxy farms); a device answering from elsewhere gets one more
        challenge there."""
        # Millisecond stamp plus random salt keeps nonces unique even within one millisecond.
        stamp = f"{int(self._clock() * 1000):012x}{os.urandom(4).hex()}"
        return stamp + self._mac(stamp, bind)

    def challenge(self, *, stale: bool = False, bind: str = "") -> str:
        """The value of a ``WWW-Authenticate`` header, its nonce bound to host ``bind``."""
        parts = [f'Digest realm="{self.realm}"', f'nonce="{self.make_nonce(bind=bind)}"']
        if self.qop:
            parts.append('qop="auth"')
        parts.append("algorithm=MD5")
        if stale:
            parts.append("stale=true")
        return ",".join(parts)

    def check_nonce(self, nonce: str, *, bind: str = "") -> Verdict:
        """``UNKNOWN_NONCE`` unless this server issued ``nonce`` to host ``bind``; then
        ``STALE`` or ``OK`` by its age."""
        if len(nonce) != 44 or not nonce.isascii():
            return Verdict.UNKNOWN_NONCE
        stamp, mac = nonce[:20], nonce[20:]
        if not hmac.compare_digest(mac, self._mac(stamp, bind)):
            return Verdict.UNKNOWN_NONCE
        return self._age_verdict(stamp)

    def _age_verdict(self, stamp: str) -> Verdict:
        try:
            issued = int(stamp[:12], 16) / 1000.0
        except ValueError:
            return Verdict.UNKNOWN_NONCE
        if stamp <= self._floor:
            return Verdict.STALE
        age = self._clock() - issued
        if age > self.nonce_ttl or age < -5.0:
            return Verdict.STALE
        return Verdict.OK

    def supports(self, creds: Credentials) -> bool:
        """Whether the answer uses what this server implements: MD5 (RFC 2617 §3.2.1; absent
        means MD5) with qop ``auth`` or none. MD5-sess, SHA-256, SHA-512-256 (RFC 8760) and
        ``auth-int`` are not: the caller re-challenges rather than refusing (a mismatch of
        protocol, not a wrong password)."""
        if creds.algorithm is not None and creds.algorithm.upper() != "MD5":
            return False
        return creds.qop is None or creds.qop.lower() == "auth"

    def verify(self, creds: Credentials, method: str, password: str, *, bind: str = "") -> Verdict:
        """Check an answer from host ``bind``. Everything about the nonce (stale, forged or
        issued to another host, used up by a failed answer, replayed) is decided before the
        password, so those verdicts say nothing about it; a stale nonce with a right password
        gets ``STALE`` and never ``BAD_PASSWORD``. A wrong password burns the nonce: the next
        answer on it gets ``USED_UP`` (RFC 2617 §4.3: the server may limit a nonce's use to
        stop replays and guessing)."""
        if not self.supports(creds):
            return Verdict.UNSUPPORTED
        if creds.realm != self.realm:
            return Verdict.WRONG_REALM
        nonce_state = self.check_nonce(creds.nonce, bind=bind)
        if nonce_state is not Verdict.OK:
            return nonce_state
        qop = creds.qop.lower() if creds.qop else None
        nc_value = 0
        if qop is not None:
            if not creds.nc or not creds.cnonce or len(creds.nc) != 8:
                return Verdict.MALFORMED
            try:
                nc_value = int(creds.nc, 16)
            except ValueError:
                return Verdict.MALFORMED
        seen = self._nc_seen.get(creds.nonce)
        if seen == _BURNED:
            return Verdict.USED_UP
        if seen is not None and (qop is None or nc_value <= seen):
            # Without qop nothing tells a reuse from a replay, so each nonce answers once: a
            # captured REGISTER replayed from elsewhere would otherwise move the device's
            # address. An honest client that reuses the nonce gets a fresh challenge.
            return Verdict.REPLAY
        expected = compute_response(
            username=creds.username,
            realm=creds.realm,
            password=password,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        if not creds.response.isascii() or not hmac.compare_digest(
            expected, creds.response.lower()
        ):
            self._remember(creds.nonce, _BURNED)
            return Verdict.BAD_PASSWORD
        self._remember(creds.nonce, nc_value)
        return Verdict.OK

    def _remember(self, nonce: str, value: int) -> None:
        self.prune()
        seen = self._nc_seen
        if nonce not in seen:
            while len(seen) >= self.max_nonces:
                # Forget the oldest entry, and with it every nonce stamped up to it: none of
                # them can be answered again (they get ``STALE``, a fresh challenge).
                oldest = next(iter(seen))
                del seen[oldest]
                self._floor = max(self._floor, oldest[:20])
        seen[nonce] = value

    def prune(self) -> None:
        """Forget the nonces past their TTL (at most every quarter TTL). Called on each answer
        and by the registrar's periodic check, so a quiet gateway does not keep the nonces of the
        last burst until the next one."""
        now = self._clock()
        if now - self._last_prune < self.nonce_ttl / 4:
            return
        self._last_prune = now
        keep = {}
        for nonce, nc in self._nc_seen.items():
            # Only issued nonces are remembered, so their age is all there is to check.
            if self._age_verdict(nonce[:20]) is Verdict.OK:
                keep[nonce] = nc
        self._nc_seen = keep


class DigestClient:
    """Answers challenges for one account, counting ``nc`` per nonce (RFC 2617 §3.2.2)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self._nonce = ""
        self._nc = 0

    def authorization(self, challenge: dict[str, str], method: str, uri: str) -> str:
        """The value of an Authorization (or Proxy-Authorization) header answering ``challenge``
        (the parameters of a WWW-Authenticate / Proxy-Authenticate header)."""
        realm = challenge.get("realm", "")
        nonce = challenge.get("nonce", "")
        algorithm = challenge.get("algorithm", "MD5")
        if algorithm.upper() != "MD5":
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        qops = [q.strip().lower() for q in challenge.get("qop", "").split(",") if q.strip()]
        if qops and "auth" not in qops:
            raise ValueError(f"unsupported qop {challenge.get('qop')!r}")
        if nonce != self._nonce:
            self._nonce, self._nc = nonce, 0
        parts = [
            f'username="{self.username}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{uri}"',
        ]
        qop = nc = cnonce = None
        if qops:
            self._nc += 1
            qop, nc, cnonce = "auth", f"{self._nc:08x}", os.urandom(8).hex()
        resp = compute_response(
            username=self.username, realm=realm, password=self.password, method=method,
            uri=uri, nonce=nonce, qop=qop, nc=nc, cnonce=cnonce,
        )  # fmt: skip
        parts += [f'response="{resp}"', "algorithm=MD5"]
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        if "opaque" in challenge:
            parts.append(f'opaque="{challenge["opaque"]}"')
        return "Digest " + ",".join(parts)
