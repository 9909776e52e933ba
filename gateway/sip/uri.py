"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1).

GB/T 28181 URIs are ``sip:<20-digit ID>@<10-digit domain | IP:port>``: the host part of a GB
URI is often all digits, which some SIP libraries refuse. This parser accepts any host made of
URI-safe characters (hostname, IPv4, bracketed IPv6, or a numeric domain) and keeps parameters in
order. Parsing is linear: no regular expression that can backtrack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip.errors import ParseError

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. ``params`` keeps ``;name=value`` pairs in order (value
    ``None`` for a flag)."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    password: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str = ""

    def param(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.params:
            if k.lower() == lname:
                return v if v is not None else ""
        return None

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host_port)
        for k, v in self.params:
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise ParseError("Bad URI", f"bad port in {whole!r}")
    port = int(text)
    if port > 65535:
        raise ParseError("Bad URI", f"port out of range in {whole!r}")
    return port


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;a=b;c`` (the leading ``;`` optional) into ordered pairs."""
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            raise ParseError("Bad Header", f"empty parameter name in {text!r}")
        out.append((name, value.strip() if eq else None))
    return tuple(out)


def parse_uri(text: str) -> SipUri:
    """Parse a SIP URI; raise :class:`ParseError` if it is not one."""
    s = text.strip()
    scheme, colon, rest = s.partition(":")
    lscheme = scheme.lower()
    if not colon or lscheme not in ("sip", "sips"):
        raise ParseError("Bad URI", f"not a sip URI: {text!r}")
    rest, _, headers = rest.partition("?")
    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
    hostport, semi, params_text = rest.partition(";")
    if not hostport:
        raise ParseError("Bad URI", f"no host in {text!r}")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ParseError("Bad URI", f"unterminated IPv6 host in {text!r}")
        host = hostport[: end + 1]
        tail = hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ParseError("Bad URI", f"junk after IPv6 host in {text!r}")
            port = _parse_port(tail[1:], text)
    else:
        host, pc, port_text = hostport.partition(":")
        if pc:
            port = _parse_port(port_text, text)
        if not host or not _HOST_CHARS.issuperset(host):
            raise ParseError("Bad URI", f"bad host in {text!r}")
    return SipUri(
        host=host,
        user=user,
        port=port,
        scheme=lscheme,
        password=password,
        params=parse_params(params_text) if semi else (),
        headers=headers,
    )


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact value: optional display name, URI, and header parameters (``tag``)."""

    uri: SipUri
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = field(default=())

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def param(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.params:
            if k.lower() == lname:
                return v if v is not None else ""
        return None

    def with_param(self, name: str, value: str | None) -> NameAddr:
        lname = name.lower()
        kept = tuple((k, v) for k, v in self.params if k.lower() != lname)
        return NameAddr(self.uri, self.display, (*kept, (name, value)))

    def __str__(self) -> str:
        head = f'"{self.display}" <{self.uri}>' if self.display else f"<{self.uri}>"
        for k, v in self.params:
            head += f";{k}" if v is None else f";{k}={v}"
        return head


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``"Name" <sip:...>;tag=x``, ``<sip:...>;tag=x`` or the bare ``sip:...;tag=x`` form.

    In the bare form RFC 3261 §20.10 gives every ``;param`` to the header, not the URI.
    """
    s = text.strip()
    lt = s.find("<")
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise ParseError("Bad Header", f"unterminated '<' in {text!r}")
        display = s[:lt].strip()
        if display.startswith('"') and display.endswith('"') and len(display) >= 2:
            display = display[1:-1]
        uri = parse_uri(s[lt + 1 : gt])
        tail = s[gt + 1 :].strip()
        return NameAddr(uri, display or None, parse_params(tail))
    addr, _, params = s.partition(";")
    if "?" in addr:
        raise ParseError("Bad Header", f"URI headers need angle brackets: {text!r}")
    return NameAddr(parse_uri(addr), None, parse_params(params))
