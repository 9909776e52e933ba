# ruff: noqa: E501  (the RFC's messages have long lines, kept as the RFC writes them)
"""RFC 4475 (SIP torture test messages), written out from the RFC's own text and fed to the codec
and to a sans-I/O core as datagrams from a peer.

§3.1.1: valid messages parse and are answered as requests (not refused). §3.1.2: invalid ones
are refused with the answer the RFC asks for (400 naming the problem, 505, 420...), or, for a
response, dropped and counted. A few are deliberately tolerated for real devices' sake; their
tests say so. Messages are written with LF here and sent with CRLF, as the RFC's are; bodies
are the RFC's SDP, whose declared lengths are checked against what is written.
"""

from __future__ import annotations

import pytest

from gateway.sip import ParseError, Peer, Request, Response, parse
from gateway.sip.transaction import ServerTransaction
from tests.sip.sipcore_rig import Rig


def sip(text: str, body: bytes | str = b"") -> bytes:
    """A message of the RFC: LF line ends become CRLF; ``text`` ends with its blank line."""
    head = text.lstrip("\n").replace("\n", "\r\n").encode("utf-8")
    if isinstance(body, str):
        body = body.replace("\n", "\r\n").encode("utf-8")
    return head + body


def sdp(addr: str, c_addr: str | None = None, t: str = "0 0", *, short: bool = False) -> str:
    """The SDP body most RFC 4475 messages carry (150 bytes for a 9-character address)."""
    lines = ["v=0", f"o=mhandley 29739 7272939 IN IP4 {addr}"]
    if not short:
        lines.append("s=-")
    lines.append(f"c=IN IP4 {c_addr or addr}")
    if not short:
        lines.append(f"t={t}")
    lines += ["m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC"]
    return "\n".join(lines) + "\n"


def declared_length_matches(data: bytes) -> bool:
    msg = parse(data)
    return len(msg.body) == int(msg.get_header("Content-Length") or len(msg.body))


# ================================ §3.1.1 valid messages ======================================

WSINV = sip(
    """
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

""",
    sdp("192.0.2.3", "192.0.2.4"),
)


def test_3_1_1_1_wsinv_a_short_tortuous_invite() -> None:
    msg = parse(WSINV)
    assert isinstance(msg, Request) and msg.method == "INVITE"
    assert declared_length_matches(WSINV)
    assert (msg.max_forwards, msg.cseq.seq, msg.cseq.method) == (68, 9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert msg.to.tag == "1918181833n" and msg.to.uri.host == "chair-dnrc.example.com"
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    [contact] = msg.contacts
    assert contact.display == 'Quoted string ""' and contact.param("q") == "0.33"
    assert msg.get_header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert Rig().final(WSINV).status == 200


INTMETH = (
    b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy"
    b"?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy'
    b"?,/;;*@example.com>\r\n"
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    + '"работающий"'.encode()
    + b";tag=_token~1'+`*%!-.\r\n"
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n"
    b"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n"
    b"Max-Forwards: 255\r\n"
    b"extensionHeader-!.%*+_`'~:" + "\ufeff大停電".encode() + b"\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_3_1_1_2_intmeth_wide_range_of_valid_characters() -> None:
    """Parsed whole; answered 405 (an unknown method), not refused as malformed."""
    msg = parse(INTMETH)
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method and msg.max_forwards == 255
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.get_header("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    resp = Rig().final(INTMETH)
    assert resp.status == 405


ESC01 = sip(
    """
INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""",
    sdp("192.0.2.1"),
)

ESCNULL = sip(
    """
REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

"""
)

ESC02 = sip(
    """
RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

"""
)

LWSDISP = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"""
)

_LONG = "long" * 20
LONGREQ = sip(
    f"""
INVITE sip:user@example.com SIP/2.0
To: "I have a user name of {"extreme" * 10} proportion"<sip:user@example.com:6000;unknownparam1=very{_LONG}value;longparam{"name" * 25}=shortvalue;very{_LONG}ParameterNameWithNoValue>
F: sip:{"amazinglylongcallername" * 5}@example.net;tag=1{"2982" * 40}424;unknownheaderparam{"name" * 20}=unknowheaderparam{"value" * 15};unknownValuelessparam{"paramname" * 10}
Call-ID: longreq.one{"really" * 20}longcallid
CSeq: 3882340 INVITE
Unknown-{"Long" * 20}-Name: unknown-{_LONG}-value; unknown-{_LONG}-parameter-name = unknown-{_LONG}-parameter-value
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
"""
    + "".join(f"Via: SIP/2.0/TCP sip{i}.example.com\n" for i in range(16, 0, -1))
    + f"""Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very{"long" * 50}branchvalue
Max-Forwards: 70
Contact: <sip:{"amazinglylongcallername" * 5}@host5.example.net>
Content-Type: application/sdp
l: 150

""",
    sdp("192.0.2.1"),
)

DBLREQ = sip(
    """
REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

""",
    sdp("192.0.2.15"),
)

SEMIURI = sip(
    """
OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"""
)

TRANSPORTS = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"""
)

# §3.1.1.11 carries an S/MIME signature as binary; the bytes here are our own, with every
# octet value, CR, LF and NUL among them.
_BINARY = bytes(range(256)) + b"\r\n\x00\r\n"
_MPART_BODY = (
    b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    b"Hello\r\n--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n\r\n" + _BINARY + b"\r\n--7a9cbec02ceef655--\r\n"
)
MPART01 = sip(
    f"""
MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: {len(_MPART_BODY)}

""",
    _MPART_BODY,
)

UNREASON = sip(
    """
SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""",
    sdp("192.0.2.198"),
)

NOREASON = sip(
    """
SIP/2.0 100 \n\
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
)

VALID_REQUESTS = {
    "esc01": (ESC01, 200),
    "escnull": (ESCNULL, 200),
    "esc02": (ESC02, 405),  # RE%47IST%45R is not REGISTER: an unknown method
    "lwsdisp": (LWSDISP, 200),
    "longreq": (LONGREQ, 200),
    "dblreq": (DBLREQ, 200),
    "semiuri": (SEMIURI, 200),
    "transports": (TRANSPORTS, 200),
    "mpart01": (MPART01, 200),
}


@pytest.mark.parametrize("name", list(VALID_REQUESTS))
def test_3_1_1_valid_requests_parse_and_are_answered(name: str) -> None:
    data, status = VALID_REQUESTS[name]
    assert declared_length_matches(data)
    rig = Rig()
    assert rig.final(data).status == status
    assert rig.metrics.get("sip.rx.bad_request") == 0
    assert rig.metrics.get("sip.rx.parse_error") == 0


def test_3_1_1_details_of_the_valid_requests() -> None:
    esc01 = parse(ESC01)
    assert esc01.request_uri.user == "sips%3Auser%40example.com"
    assert esc01.from_.uri.user == "I%20have%20spaces"
    assert esc01.contacts[0].uri.params[0] == ("%6C%72", None)
    assert len(parse(ESCNULL).contacts) == 2
    esc02 = parse(ESC02)
    assert esc02.method == "RE%47IST%45R" and len(esc02.contacts) == 2
    assert esc02.get_header("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert parse(LWSDISP).from_.display == "caller"
    longreq = parse(LONGREQ)
    assert len(longreq.vias) == 34 and longreq.to.uri.port == 6000
    dblreq = parse(DBLREQ)  # one datagram: the REGISTER, and the rest is not a body
    assert dblreq.method == "REGISTER" and dblreq.body == b""
    assert parse(SEMIURI).request_uri.user == "user;par=u%40example.net"
    assert [v.transport for v in parse(TRANSPORTS).vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert parse(MPART01).body.endswith(b"--7a9cbec02ceef655--\r\n")


@pytest.mark.parametrize(("data", "status", "reason"), [(UNREASON, 200, None), (NOREASON, 100, "")])
def test_3_1_1_12_and_13_responses_with_odd_reasons(
    data: bytes, status: int, reason: str | None
) -> None:
    msg = parse(data)
    assert isinstance(msg, Response) and msg.status == status
    if reason is None:
        assert msg.reason.startswith("= 2**3 * 5**2 но") and declared_length_matches(data)
    else:
        assert msg.reason == reason
    rig = Rig()
    assert rig.feed(data) == []  # a response to nothing of ours: counted, not answered
    assert rig.metrics.get("sip.rx.stray_response") == 1


# ================================ §3.1.2 invalid messages ====================================

BADINV01 = sip(
    """
INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""",
    sdp("192.0.2.15"),
)

CLERR = sip(
    """
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""",
    sdp("192.0.2.155"),
)

SCALAR02 = sip(
    f"""
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1{"0" * 100}
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"""
)

SCALARLG = sip(
    """
SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"""
)

QUOTBAL = sip(
    """
INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""",
    sdp("192.0.2.15"),
)

LTGTRURI = sip(
    """
INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""",
    sdp("192.0.2.5", t="3149328700 0"),
)

LWSRURI = sip(
    """
INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""",
    sdp("192.0.2.1", t="3149328700 0"),
)

LWSSTART = sip(
    """
INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""",
    sdp("192.0.2.1"),
)

TRWS = sip(
    """
OPTIONS sip:remote-target@example.com SIP/2.0  \n\
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

"""
)

ESCRURI = sip(
    """
INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""",
    sdp("192.0.2.1"),
)

BADDATE = sip(
    """
INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""",
    sdp("192.0.2.5"),
)

REGBADCT = sip(
    """
REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

"""
)

BADASPEC = sip(
    """
OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

"""
)

BADDN = sip(
    """
OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

"""
)

BADVERS = sip(
    """
OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

"""
)

MISMATCH01 = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

"""
)

MISMATCH02 = sip(
    """
NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

""",
    sdp("192.0.2.1", short=True),
)

BCAST = sip(
    """
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

""",
    sdp("192.0.2.198"),
)

BEXT01 = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

"""
)

BIGCODE = sip(
    """
SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
)

NCL = sip(
    """
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

""",
    sdp("192.0.2.53"),
)

INSUF = sip(
    """
INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""",
    sdp("192.0.2.95"),
)

MCL01 = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
"""
)

MULTI01 = sip(
    """
INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""",
    # The RFC's SDP here is 152 bytes under its "l: 154"; one more line end makes the two
    # agree, so that what is tested is the duplicates (short, it is refused as truncated).
    sdp("192.0.2.25") + "\n",
)

INVALID_REQUESTS = {
    # name: (message, status, reason)
    "badinv01 (§3.1.2.1)": (BADINV01, 400, "Bad Via"),
    "clerr (§3.1.2.2, over UDP)": (CLERR, 400, "Truncated Body"),
    "ncl (§3.1.2.3)": (NCL, 400, "Bad Content-Length"),
    "scalar02 (§3.1.2.4)": (SCALAR02, 400, "Bad CSeq"),
    "quotbal (§3.1.2.6)": (QUOTBAL, 400, "Bad To"),
    "ltgtruri (§3.1.2.7)": (LTGTRURI, 400, "Bad Request-URI"),
    "lwsruri (§3.1.2.8)": (LWSRURI, 400, "Bad Request Line"),
    "lwsstart (§3.1.2.9)": (LWSSTART, 400, "Bad Request Line"),
    "trws (§3.1.2.10)": (TRWS, 400, "Bad Request Line"),
    "escruri (§3.1.2.11)": (ESCRURI, 400, "Bad Request-URI"),
    "baddn (§3.1.2.16)": (BADDN, 400, "Bad From"),
    "badvers (§3.1.2.17)": (BADVERS, 505, "Version Not Supported"),
    "mismatch01 (§3.1.2.18)": (MISMATCH01, 400, "CSeq Method Mismatch"),
    # §3.1.2.19 prefers 501 and accepts 400: the CSeq check comes before the method's.
    "mismatch02 (§3.1.2.19)": (MISMATCH02, 400, "CSeq Method Mismatch"),
    "mcl01 (§3.1.2.?, two Content-Lengths)": (MCL01, 400, "Duplicate Content-Length"),
    "multi01 (§3.1.2.?, two CSeqs, Call-IDs...)": (MULTI01, 400, "Duplicate CSeq"),
    "insuf (§3.1.2.?, required headers missing)": (INSUF, 400, "Missing From"),
    "bext01 (§3.1.2.?, Require)": (BEXT01, 420, "Bad Extension"),
}


@pytest.mark.parametrize("name", list(INVALID_REQUESTS))
def test_3_1_2_invalid_requests_are_refused_with_the_right_answer(name: str) -> None:
    data, status, reason = INVALID_REQUESTS[name]
    rig = Rig()
    resp = rig.final(data)
    assert (resp.status, resp.reason) == (status, reason)
    assert rig.user.seen == []
    # Refused ones keep nothing; bext01 is refused inside its transaction (so that a
    # retransmission gets the same answer), which ends with timer J.
    if status != 420:
        assert dict(rig.core.server_transactions) == {}


def test_bext01_lists_the_unsupported_extensions() -> None:
    resp = Rig().final(BEXT01)
    assert resp.get_header("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"


@pytest.mark.parametrize("data", [SCALARLG, BCAST, BIGCODE], ids=["scalarlg", "bcast", "bigcode"])
def test_3_1_2_invalid_responses_are_dropped_and_counted(data: bytes) -> None:
    rig = Rig()
    assert rig.feed(data) == []
    counted = sum(
        rig.metrics.get(name)
        for name in ("sip.rx.bad_response", "sip.rx.parse_error", "sip.rx.stray_response")
    )
    assert counted == 1


def test_3_1_2_12_regbadct_a_contact_with_headers_needs_angle_brackets() -> None:
    """The codec refuses the Contact; a registrar reading it answers 400 through ``fail``."""
    with pytest.raises(ParseError, match="Bad Contact"):
        _ = parse(REGBADCT).contacts
    rig = Rig()

    def read_contacts(req: Request, peer: Peer, txn: ServerTransaction | None) -> None:
        _ = req.contacts

    rig.user.request_received = read_contacts  # type: ignore[method-assign]
    resp = rig.final(REGBADCT)
    assert (resp.status, resp.reason) == (400, "Bad Contact")


def test_3_1_2_14_baddate_is_tolerated() -> None:
    """Deliberate: the gateway reads no Date from a request (GB devices take the time from the
    Date of its REGISTER answers), so a Date in a non-GMT zone is not a reason to refuse."""
    assert Rig().final(BADDATE).status == 200


def test_3_1_2_15_badaspec_is_tolerated() -> None:
    """Deliberate: white space inside ``< >`` is taken (the URI is stripped), as most stacks
    do; devices in the field send worse."""
    msg = parse(BADASPEC)
    assert str(msg.to.uri) == "sip:t.watson@example.org"
    assert msg.from_.display == "Bell, Alexander"  # quoted: fine
    assert Rig().final(BADASPEC).status == 200


# ================================ §3.3, §3.4 semantics =======================================

ZEROMF = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

"""
)

UNKSCM = sip(
    """
OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
)

NOVELSC = sip(
    """
OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
)

BADBRANCH = sip(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

"""
)

INV2543 = sip(
    """
INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

""",
    "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.5\ns=-\nc=IN IP4 192.0.2.5\nt=0 0\n"
    "m=audio 49217 RTP/AVP 0\n",
)


def test_3_3_11_zeromf_max_forwards_zero_is_processed() -> None:
    """The gateway is an endpoint: Max-Forwards 0 does not stop a request addressed to it."""
    assert Rig().final(ZEROMF).status == 200


@pytest.mark.parametrize("data", [UNKSCM, NOVELSC], ids=["unkscm", "novelsc"])
def test_3_1_1_unknown_request_uri_schemes_get_416(data: bytes) -> None:
    resp = Rig().final(data)
    assert (resp.status, resp.reason) == (416, "Unsupported URI Scheme")


def test_3_3_badbranch_a_bare_magic_cookie_is_a_branch() -> None:
    assert Rig().final(BADBRANCH).status == 200


def test_3_4_inv2543_without_max_forwards_is_processed() -> None:
    """RFC 4475 §3.4: an RFC 2543 request is processed. Its missing Max-Forwards (a UAC's
    MUST since RFC 3261, a proxy's loop guard) does not stop it at an endpoint (issue 15: real
    upper platforms leave it out); it is counted."""
    rig = Rig()
    resp = rig.final(INV2543)
    assert resp.status == 200
    assert rig.metrics.get("sip.rx.no_max_forwards") == 1
