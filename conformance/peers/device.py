"""A simulated GB/T 28181 device (IPC/NVR): registers with digest, keeps alive, unregisters.

Many devices can share one :class:`~gateway.sip.endpoint.Endpoint` (one socket), so a single
process can play thousands of them. This first version covers registration and keepalive
(GB/T 28181-2022 §9.1, §9.6); queries, catalog and media arrive with the downlink issue.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from gateway.sip.digest import DigestClient
from gateway.sip.endpoint import Endpoint
from gateway.sip.message import Request, Response
from gateway.sip.transport import Peer

_sn = itertools.count(1)


def keepalive_body(device_id: str, sn: int, status: str = "OK", extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="GB2312"?>\r\n'
        "<Notify>\r\n"
        "<CmdType>Keepalive</CmdType>\r\n"
        f"<SN>{sn}</SN>\r\n"
        f"<DeviceID>{device_id}</DeviceID>\r\n"
        f"<Status>{status}</Status>\r\n"
        f"{extra}"
        "</Notify>\r\n"
    ).encode("gb2312")


@dataclass
class SimDevice:
    endpoint: Endpoint
    device_id: str
    server: Peer
    server_id: str = "34020000002000000001"
    domain: str = "3402000000"
    password: str = "12345678"
    expires: int = 3600
    gb_version: str | None = None
    user_agent: str = "gb28181-sim IP Camera"
    call_id: str = field(default_factory=lambda: os.urandom(8).hex())
    from_tag: str = field(default_factory=lambda: os.urandom(4).hex())
    cseq: int = 0
    last_challenge: dict[str, str] | None = None
    responses: list[Response] = field(default_factory=list)

    @property
    def aor(self) -> str:
        return f"sip:{self.device_id}@{self.domain}"

    @property
    def server_uri(self) -> str:
        return f"sip:{self.server_id}@{self.domain}"

    def build_register(self, expires: int, authorization: str | None = None) -> Request:
        self.cseq += 1
        headers = [
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.endpoint.contact_uri(self.device_id, self.server)}>"),
            ("Max-Forwards", "70"),
            ("User-Agent", self.user_agent),
            ("Expires", str(expires)),
        ]
        if self.gb_version:
            headers.append(("X-GB-Ver", self.gb_version))
        if authorization:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", self.server_uri, headers)

    async def register(self, expires: int | None = None, *, max_challenges: int = 2) -> Response:
        """REGISTER, answering up to ``max_challenges`` 401s; return the last response."""
        exp = self.expires if expires is None else expires
        client = DigestClient(self.device_id, self.password)
        authorization: str | None = None
        for _ in range(max_challenges + 1):
            resp = await self.endpoint.request(self.build_register(exp, authorization), self.server)
            self.responses.append(resp)
            if resp.status != 401:
                return resp
            challenge = resp.auth_params("WWW-Authenticate")
            if challenge is None:
                return resp
            self.last_challenge = challenge[1]
            authorization = client.authorization(challenge[1], "REGISTER", self.server_uri)
        return resp

    async def unregister(self) -> Response:
        return await self.register(0)

    def build_message(self, body: bytes) -> Request:
        return Request(
            "MESSAGE",
            self.server_uri,
            [
                ("From", f"<{self.aor}>;tag={os.urandom(4).hex()}"),
                ("To", f"<{self.server_uri}>"),
                ("Call-ID", os.urandom(8).hex()),
                ("CSeq", "20 MESSAGE"),
                ("Content-Type", "Application/MANSCDP+xml"),
                ("Max-Forwards", "70"),
                ("User-Agent", self.user_agent),
            ],
            body,
        )

    async def keepalive(self, status: str = "OK", extra: str = "") -> Response:
        body = keepalive_body(self.device_id, next(_sn), status, extra)
        return await self.endpoint.request(self.build_message(body), self.server)
