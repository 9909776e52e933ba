"""The WHEP routes over HTTP against a stand-in preview service (no media): status codes and
headers of draft-ietf-wish-whep / RFC 9725, who may end whose session, the audit of opens and
ends, the ``/api/v1/previews`` list, and the preview figures on ``/metrics``. The media path
through the real service is in ``test_whep.py``."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.whep import MAX_OFFER_BYTES, ice_server_links
from gateway.app import Gateway
from gateway.preview import PreviewError
from gateway.settings import IceServer
from tests.api.conftest import HTTP_TOKENS, TOKENS
from tests.conftest import make_config

pytestmark = pytest.mark.timeout(60)

CHANNEL = "34020000001310000001"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
SDP = {"Content-Type": "application/sdp"}
VIEWER2 = "second-viewer-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


class FakePreviews:
    """The preview service's interface (CONTRACT part B) with no media: ``refuse`` makes the
    next opens raise it."""

    def __init__(self) -> None:
        self.open_: dict[str, dict[str, Any]] = {}
        self.offers: list[tuple[str, str, str]] = []
        self.ended: list[tuple[str, str]] = []
        self.refuse: PreviewError | None = None
        self.now = 1000.0

    @property
    def active(self) -> int:
        return len(self.open_)

    async def open(self, channel_id: str, offer: str, *, owner: str) -> tuple[str, str]:
        self.offers.append((channel_id, offer, owner))
        if self.refuse is not None:
            raise self.refuse
        sid = secrets.token_urlsafe(16)
        self.open_[sid] = {
            "id": sid,
            "channel_id": channel_id,
            "owner": owner,
            "started_at": self.now,
            "state": "connecting",
            "frames_sent": 0,
            "bytes_sent": 0,
            "first_frame_ms": None,
        }
        self.now += 1.0
        return sid, ANSWER

    async def end(self, session_id: str, reason: str = "deleted") -> bool:
        if self.open_.pop(session_id, None) is None:
            return False
        self.ended.append((session_id, reason))
        return True

    def session(self, session_id: str) -> dict[str, Any] | None:
        found = self.open_.get(session_id)
        return dict(found) if found is not None else None

    def sessions(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.open_.values()]


class Whep:
    def __init__(self, gw: Gateway, fake: FakePreviews) -> None:
        assert gw.api is not None
        self.gw, self.fake = gw, fake
        self.base = f"http://127.0.0.1:{gw.api.port}"
        self.clients: list[httpx.AsyncClient] = []

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30.0)
        self.clients.append(c)
        return c


@pytest.fixture
async def whep(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Whep]]]:
    made: list[Whep] = []

    async def start(**preview: Any) -> Whep:
        tokens = [*HTTP_TOKENS, {"name": "viewer2", "role": "viewer", "token": VIEWER2}]
        cfg = make_config(
            tmp_path,
            http={"port": 0, "tokens": tokens, "metrics_min_interval": 0},
            preview=preview,
        )
        gw = Gateway(cfg)
        await gw.start()
        assert gw.api is not None
        fake = FakePreviews()
        gw.api.ctx.previews = fake  # type: ignore[assignment]
        w = Whep(gw, fake)
        made.append(w)
        return w

    yield start
    for w in made:
        for c in w.clients:
            await c.aclose()
        await w.gw.close()


async def test_post_offer_gets_201_answer_location_and_ice_servers(whep: Any) -> None:
    w = await whep(
        ice_servers=[
            {"urls": ["stun:stun.example.org:3478"]},
            {"urls": ["turn:turn.example.org?transport=udp"], "username": "u", "credential": "p"},
        ]
    )
    viewer = w.client(TOKENS["viewer"])
    r = await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == "application/sdp"
    assert r.text == ANSWER
    (sid,) = w.fake.open_
    assert r.headers["location"] == f"/whep/sessions/{sid}"
    assert w.fake.offers == [(CHANNEL, OFFER, "token:viewer-token")]
    assert r.headers.get_list("link") == [
        '<stun:stun.example.org:3478>; rel="ice-server"',
        '<turn:turn.example.org?transport=udp>; rel="ice-server"; username="u"; '
        'credential="p"; credential-type="password"',
    ]
    # A media type with parameters is still SDP.
    r = await viewer.post(
        f"/whep/channels/{CHANNEL}",
        content=OFFER,
        headers={"Content-Type": "Application/SDP; charset=utf-8"},
    )
    assert r.status_code == 201


def test_ice_server_links_quote_and_skip_what_a_header_cannot_carry() -> None:
    servers = (
        IceServer(urls=("turn:t.example.org",), username='a"b\\c', credential="x"),
        IceServer(urls=("stun:bad host", "stun:ok.example.org"), username="", credential=""),
        IceServer(urls=("turn:t2.example.org",), username="line\r\nbreak", credential="x"),
    )
    assert ice_server_links(servers) == [
        '<turn:t.example.org>; rel="ice-server"; username="a\\"b\\\\c"; credential="x"; '
        'credential-type="password"',
        '<stun:ok.example.org>; rel="ice-server"',
    ]


async def test_refusals_before_the_service_is_asked(whep: Any) -> None:
    w = await whep()
    viewer = w.client(TOKENS["viewer"])
    url = f"/whep/channels/{CHANNEL}"
    r = await w.client(None).post(url, content=OFFER, headers=SDP)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "missing or invalid bearer token"
    assert (await w.client("wrong").post(url, content=OFFER, headers=SDP)).status_code == 401
    r = await viewer.post(url, content=OFFER, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.headers["accept-post"] == "application/sdp"
    assert "application/sdp" in r.json()["error"]
    r = await viewer.post(url, content=OFFER)  # no Content-Type at all
    assert r.status_code == 415
    r = await viewer.post(url, content=b"v=0\r\n" + b"a" * MAX_OFFER_BYTES, headers=SDP)
    assert r.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut while it arrives
        for _ in range(100):
            yield b"a" * 4096

    r = await viewer.post(url, content=chunks(), headers=SDP)
    assert r.status_code == 413
    assert (await viewer.post(url, content=b"", headers=SDP)).status_code == 400
    r = await viewer.post(url, content=b"v=0\r\n\xff\xfe", headers=SDP)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    assert w.fake.offers == []  # none of these reached the service


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (PreviewError(404, "no channel 34020000001310000001"), "channel_id"),
        (PreviewError(409, "device 34020000001180000001 is offline"), "channel_id"),
        (
            PreviewError(
                415, "the channel's video is H.265; browsers cannot be assumed to take it"
            ),
            "body",
        ),
        (PreviewError(400, "the offer has no video m-line"), "body"),
        (PreviewError(503, "preview.max_sessions (2) reached", retry_after=5), None),
        (PreviewError(503, "the device did not answer the INVITE"), None),
    ],
)
async def test_service_refusals_become_json_errors(
    whep: Any, error: PreviewError, field: str | None
) -> None:
    w = await whep()
    w.fake.refuse = error
    r = await w.client(TOKENS["viewer"]).post(
        f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP
    )
    assert r.status_code == error.status
    assert r.json() == {"error": error.message, "field": field}
    if error.retry_after is not None:
        assert r.headers["retry-after"] == str(error.retry_after)
    else:
        assert "retry-after" not in r.headers


async def test_delete_by_owner_or_operator_else_404(whep: Any) -> None:
    w = await whep()
    viewer, viewer2 = w.client(TOKENS["viewer"]), w.client(VIEWER2)
    operator = w.client(TOKENS["operator"])
    url = f"/whep/channels/{CHANNEL}"
    first = (await viewer.post(url, content=OFFER, headers=SDP)).headers["location"]
    second = (await viewer.post(url, content=OFFER, headers=SDP)).headers["location"]
    # Another viewer is told the session does not exist, exactly as for an unknown one.
    other = await viewer2.delete(first)
    unknown = await viewer2.delete("/whep/sessions/no-such-session")
    assert other.status_code == unknown.status_code == 404
    assert other.json() == unknown.json()
    assert (await w.client(None).delete(first)).status_code == 401
    assert w.fake.active == 2
    r = await viewer.delete(first)
    assert r.status_code == 200 and r.content == b""
    assert (await viewer.delete(first)).status_code == 404  # already ended
    assert (await operator.delete(second)).status_code == 200  # an operator ends anyone's
    assert [reason for _, reason in w.fake.ended] == ["deleted", "deleted"]
    assert w.fake.active == 0


async def test_patch_options_and_other_methods(whep: Any) -> None:
    w = await whep()
    viewer = w.client(TOKENS["viewer"])
    sid_url = (await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)).headers[
        "location"
    ]
    # No trickle ICE, no ICE restart: PATCH is 405 (RFC 9725 §4.3.1), token or not.
    for client in (viewer, w.client(None)):
        r = await client.patch(
            sid_url,
            content="a=ice-ufrag:x\r\n",
            headers={"Content-Type": "application/trickle-ice-sdpfrag"},
        )
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, OPTIONS"
    r = await viewer.options(sid_url)
    assert r.status_code == 204 and r.headers["allow"] == "DELETE, OPTIONS"
    r = await w.client(None).options(f"/whep/channels/{CHANNEL}")
    assert r.status_code == 204
    assert r.headers["allow"] == "POST, OPTIONS"
    assert r.headers["accept-post"] == "application/sdp"
    for method in ("GET", "PUT", "DELETE"):
        r = await viewer.request(method, f"/whep/channels/{CHANNEL}")
        assert r.status_code == 405 and r.headers["allow"] == "POST, OPTIONS", method
    r = await viewer.get(sid_url)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, OPTIONS"
    assert w.fake.active == 1  # none of these touched the session


async def test_preview_disabled_answers_404_saying_so(whep: Any) -> None:
    w = await whep(enabled=False)
    viewer = w.client(TOKENS["viewer"])
    r = await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)
    assert r.status_code == 404 and "disabled" in r.json()["error"]
    assert (await viewer.delete("/whep/sessions/x")).status_code == 404
    assert (await viewer.options(f"/whep/channels/{CHANNEL}")).status_code == 404
    assert w.fake.offers == []
    listed = (await viewer.get("/api/v1/previews")).json()
    assert listed["enabled"] is False and listed["items"] == []


async def test_previews_list_own_for_a_viewer_all_for_an_operator(whep: Any) -> None:
    w = await whep(max_sessions=7)
    viewer, viewer2 = w.client(TOKENS["viewer"]), w.client(VIEWER2)
    url = f"/whep/channels/{CHANNEL}"
    for client in (viewer, viewer2, viewer):
        assert (await client.post(url, content=OFFER, headers=SDP)).status_code == 201
    assert (await w.client(None).get("/api/v1/previews")).status_code == 401
    mine = (await viewer.get("/api/v1/previews")).json()
    assert mine["enabled"] is True and mine["active"] == 3 and mine["max_sessions"] == 7
    assert mine["total"] == 2 and {s["owner"] for s in mine["items"]} == {"token:viewer-token"}
    everyone = (await w.client(TOKENS["operator"]).get("/api/v1/previews")).json()
    assert everyone["total"] == 3
    assert [s["owner"] for s in everyone["items"]] == [
        "token:viewer-token",
        "token:viewer2",
        "token:viewer-token",
    ]
    assert set(everyone["items"][0]) >= {"id", "channel_id", "owner", "started_at", "state"}
    page = (await w.client(TOKENS["admin"]).get("/api/v1/previews?offset=1&limit=1")).json()
    assert page["total"] == 3 and page["items"] == everyone["items"][1:2]


async def test_opens_and_ends_are_audited(whep: Any) -> None:
    w = await whep()
    viewer, operator = w.client(TOKENS["viewer"]), w.client(TOKENS["operator"])
    url = f"/whep/channels/{CHANNEL}"
    w.fake.now = time.time() - 42  # the session started 42 s ago
    location = (await viewer.post(url, content=OFFER, headers=SDP)).headers["location"]
    sid = location.rsplit("/", 1)[1]
    w.fake.refuse = PreviewError(409, "device 34020000001180000001 is offline")
    assert (await viewer.post(url, content=OFFER, headers=SDP)).status_code == 409
    assert (await operator.delete(location)).status_code == 200
    await w.client(None).post(url, content=OFFER, headers=SDP)  # a stranger: never stored
    items = (await w.client(TOKENS["admin"]).get("/api/v1/audit")).json()["items"]
    got = [(e["who"], e["action"], e["target"], e["outcome"]) for e in items]
    assert got == [
        ("operator-token", "DELETE /whep/sessions/{session_id}", f"session_id={sid}", "200"),
        ("viewer-token", "POST /whep/channels/{channel_id}", f"channel_id={CHANNEL}", "409"),
        ("viewer-token", "POST /whep/channels/{channel_id}", f"channel_id={CHANNEL}", "201"),
    ]
    ended = f"channel {CHANNEL} of token:viewer-token, watched 4[2-9] s"
    assert re.fullmatch(ended, items[0]["detail"])
    assert items[1]["detail"] == "refused: device 34020000001180000001 is offline"
    assert items[2]["detail"] == f"session {sid}"


async def test_refused_previews_are_audited_within_a_budget(whep: Any) -> None:
    """A player retrying a busy channel in a loop does not fill the audit log."""
    w = await whep()
    viewer = w.client(TOKENS["viewer"])
    w.fake.refuse = PreviewError(503, "preview.max_sessions (1) reached", retry_after=5)
    for _ in range(15):
        r = await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)
        assert r.status_code == 503
    items = (await w.client(TOKENS["admin"]).get("/api/v1/audit")).json()["items"]
    assert len(items) == 10
    assert w.gw.metrics.get("api.audit.suppressed") == 5
    # The budget is the principal's (kind and name): a console user named like the token still
    # has its own.
    admin = w.client(TOKENS["admin"])
    password = "a long enough password"
    made = await admin.post(
        "/api/v1/users", json={"username": "viewer-token", "password": password, "role": "viewer"}
    )
    assert made.status_code == 201, made.text
    login = await w.client(None).post(
        "/api/v1/auth/login", json={"username": "viewer-token", "password": password}
    )
    namesake = w.client(login.json()["token"])
    r = await namesake.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)
    assert r.status_code == 503
    refused = (await admin.get("/api/v1/audit")).json()["items"]
    opens = [e for e in refused if e["action"].startswith("POST /whep")]
    assert len(opens) == 11
    assert w.gw.metrics.get("api.audit.suppressed") == 5


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_preview_figures_on_metrics(whep: Any) -> None:
    w = await whep()
    viewer = w.client(TOKENS["viewer"])
    for _ in range(2):
        await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)
    m = w.gw.metrics
    m.inc("preview.started", 2)
    m.inc("preview.refused.503", 3)
    m.inc("preview.refused.415")
    m.inc("preview.ended.deleted", 4)
    m.inc("preview.ended.max_seconds")
    m.inc("preview.frames_sent", 250)
    m.inc("preview.bytes_sent", 123456)
    m.observe("preview.first_frame", 0.08)
    m.observe("preview.first_frame", 1.7)
    got = samples((await w.client(None).get("/metrics")).text)
    assert got[("gb_previews_active", ())] == 2
    assert got[("gb_preview_started_total", ())] == 2
    assert got[("gb_preview_refused_total", (("status", "503"),))] == 3
    assert got[("gb_preview_refused_total", (("status", "415"),))] == 1
    assert got[("gb_preview_ended_total", (("reason", "deleted"),))] == 4
    assert got[("gb_preview_ended_total", (("reason", "max_seconds"),))] == 1
    assert got[("gb_preview_sent_frames_total", ())] == 250
    assert got[("gb_preview_sent_bytes_total", ())] == 123456
    assert got[("gb_preview_first_frame_seconds_count", ())] == 2
    assert got[("gb_preview_first_frame_seconds_bucket", (("le", "0.1"),))] == 1
    assert got[("gb_preview_first_frame_seconds_bucket", (("le", "+Inf"),))] == 2
    assert got[("gb_events_total", (("name", "preview.started"),))] == 2


async def test_the_dashboard_has_a_preview_row_of_served_metrics(whep: Any) -> None:
    """Every preview family is declared on /metrics before anything was counted, and the
    Grafana dashboard's preview row uses only those."""
    w = await whep()
    text = (await w.client(None).get("/metrics")).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    served = {f + s for f in families for s in ("", "_total", "_bucket", "_sum", "_count")}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "gb28181-gateway.json").read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    row = titles.index("Live preview")
    assert dashboard["panels"][row]["type"] == "row"
    exprs = [t["expr"] for p in dashboard["panels"][row + 1 : row + 5] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bgb_[a-z_]+", e)}
    assert used == {
        "gb_previews_active",
        "gb_preview_started_total",
        "gb_preview_first_frame_seconds_bucket",
        "gb_preview_ended_total",
        "gb_preview_refused_total",
        "gb_preview_sent_bytes_total",
        "gb_preview_sent_frames_total",
    }
    assert used <= served


async def test_a_player_leaving_mid_offer_is_not_a_gateway_error(whep: Any) -> None:
    """The body stops with ``http.disconnect``: answered 400 (nobody reads it), no
    ``api.error`` and no error-level log line, nothing reaches the service."""
    w = await whep()
    assert w.gw.api is not None
    incoming = [
        {"type": "http.request", "body": b"v=0\r\n", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/whep/channels/{CHANNEL}",
        "raw_path": f"/whep/channels/{CHANNEL}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {TOKENS['viewer']}".encode()),
            (b"content-type", b"application/sdp"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    await w.gw.api.app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert w.gw.metrics.get("api.error") == 0
    assert w.fake.offers == []


async def test_a_user_named_like_a_token_does_not_own_its_previews(whep: Any) -> None:
    """Ownership is the principal's kind and name: a console user called ``viewer-token`` is
    not the token of that name."""
    w = await whep()
    admin = w.client(TOKENS["admin"])
    made = await admin.post(
        "/api/v1/users",
        json={"username": "viewer-token", "password": "a long enough password", "role": "viewer"},
    )
    assert made.status_code == 201, made.text
    login = await w.client(None).post(
        "/api/v1/auth/login",
        json={"username": "viewer-token", "password": "a long enough password"},
    )
    assert login.status_code == 200, login.text
    namesake = w.client(login.json()["token"])
    viewer = w.client(TOKENS["viewer"])
    where = (await viewer.post(f"/whep/channels/{CHANNEL}", content=OFFER, headers=SDP)).headers[
        "location"
    ]
    assert w.fake.offers[-1][2] == "token:viewer-token"
    assert (await namesake.get("/api/v1/previews")).json()["total"] == 0
    assert (await namesake.delete(where)).status_code == 404
    assert w.fake.active == 1
    assert (await viewer.delete(where)).status_code == 200
