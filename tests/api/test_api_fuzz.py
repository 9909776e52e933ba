"""Hypothesis over every route of the API: nothing a client sends (with the admin's token) gets
a 5xx, every 4xx has the one error shape, and afterwards the gateway still answers and its
store still loads (records, the audit log, a gateway started again on it).

The routes come from the app's own OpenAPI document, so routes added later are covered too.
Each example picks one operation and draws its path parameters, query parameters and body:
sometimes plausible (by the schema: enums, bounds, types), sometimes junk (huge strings, NUL,
lone surrogates, NaN, nested lists and objects, wrong types, extra keys, bytes that are not
JSON). One gateway serves the whole run, in an event loop of its own thread; the examples are
plain synchronous HTTP requests to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from tests.api.conftest import HTTP_TOKENS, TOKENS
from tests.conftest import make_config

T = TypeVar("T")
METHODS = ("get", "post", "put", "patch", "delete")
# A longer run: API_FUZZ_EXAMPLES=2000 pytest tests/api/test_api_fuzz.py
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "160"))
URL_PART = 5_000  # characters of one path or query value (httpx refuses URLs over 64 KiB)

# -- junk ------------------------------------------------------------------------------------
_odd_chars = st.sampled_from(
    [
        "\x00",
        "\ud800",
        "\udfff",
        "\u202e",
        "\ufeff",
        "𝕏",
        "中",
        "'",
        '"',
        "\\",
        "%",
        "/",
        "..",
        "\n",
    ]
)
_texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_odd_chars, st.text(max_size=3)), max_size=12).map("".join),
    st.integers(1_000, 100_000).map(lambda n: "x" * n),
    st.sampled_from(
        [
            "",
            " ",
            "34020000001320000001",
            "34020000001310000001",
            "admin-token",
            "viewer",
            "operator",
            "admin",
            "true",
            "null",
            "-1",
            "1e309",
            "_unassigned",
            "udp",
            "tcp",
            "accept",
            "reject",
        ]
    ),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _texts,
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _plausible(
    spec: dict[str, Any], schema: dict[str, Any], depth: int = 0, strict: bool = False
) -> st.SearchStrategy[Any]:
    """Values near what ``schema`` allows (its enums, bounds, patterns and types); ``strict``:
    within them, as far as the schema says (so writes get through and change things)."""
    schema = _resolve(spec, schema)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options and depth < 4:
        return st.one_of(*[_plausible(spec, o, depth + 1, strict) for o in options])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        lo = int(schema.get("minimum", -(2**40)))
        hi = int(schema.get("maximum", 2**40))
        if strict:
            return st.integers(lo, min(hi, lo + 1000))
        return st.one_of(st.integers(lo - 2, hi + 2), st.sampled_from([lo, hi, 0, -1]))
    if kind == "number":
        if strict:
            return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        lo, hi = int(schema.get("minLength", 0)), int(schema.get("maxLength", 80))
        if strict and "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda t: lo <= len(t) <= hi
            )
        if strict:
            return st.text(min_size=lo, max_size=min(hi, 300))
        return st.one_of(st.text(min_size=lo, max_size=min(hi + 2, 300)), _texts)
    if kind == "array" and depth < 4:
        item = _plausible(spec, schema.get("items", {}), depth + 1, strict)
        return st.lists(item, max_size=5)
    if kind == "object" or "properties" in schema:
        return _object(spec, schema, depth + 1, strict)
    return _scalars if strict else _junk


def _object(
    spec: dict[str, Any], schema: dict[str, Any], depth: int, strict: bool = False
) -> st.SearchStrategy[Any]:
    props = schema.get("properties", {}) if depth < 5 else {}
    fields = {
        name: (
            _plausible(spec, sub, depth, strict)
            if strict
            else st.one_of(_plausible(spec, sub, depth), _junk)
        )
        for name, sub in props.items()
    }
    for name in ("host", "sip_host"):
        if name in fields:  # never reach past loopback
            fields[name] = (
                st.just("127.0.0.1") if strict else st.one_of(st.just("127.0.0.1"), _junk)
            )
    required = set(schema.get("required", ()))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, strategy in fields.items():
            if name in required or draw(st.booleans()):
                out[name] = draw(strategy)
        if not strict and draw(st.integers(0, 9)) == 0:
            out.update(draw(st.dictionaries(st.text(max_size=12), _junk, max_size=3)))
        return out

    return build()


# -- one request -----------------------------------------------------------------------------
def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            answers = json.dumps(op.get("responses", {}))
            if path.endswith("/events") or "text/event-stream" in answers:
                continue  # a stream that never ends; covered by its own tests
            ops.append((method.upper(), path, op))
    return ops


def _quote(text: str) -> str:
    """Percent-encoded UTF-8, lone surrogates included (bytes no decoder accepts)."""
    return quote(text, safe="", errors="surrogatepass")


@st.composite
def _request(draw: st.DrawFn, spec: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    method, template, op = draw(st.sampled_from(ops))
    strict = draw(st.integers(0, 9)) >= 5  # half the examples stay within the schema
    params = [_resolve(spec, p) for p in op.get("parameters", [])]
    path = template
    for p in params:
        if p["in"] == "path":
            value = draw(st.one_of(_texts, _plausible(spec, p.get("schema", {})).map(str)))
            quoted = _quote(str(value)[:URL_PART]) or "%20"
            path = path.replace("{" + p["name"] + "}", quoted)
    query: dict[str, str] = {}
    for p in params:
        if p["in"] == "query" and draw(st.booleans()):
            schema = p.get("schema", {})
            if strict:
                value = draw(_plausible(spec, schema, strict=True))
            else:
                value = draw(st.one_of(_plausible(spec, schema), _scalars))
            text = value if isinstance(value, str) else json.dumps(value)
            query[p["name"]] = text[:URL_PART]
    if not strict and draw(st.integers(0, 9)) == 0:
        query.update(draw(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3)))
    if query:
        path += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items())
    request: dict[str, Any] = {"method": method, "url": path, "op": f"{method} {template}"}
    body = op.get("requestBody")
    if body is not None or (method != "GET" and draw(st.booleans())):
        content = (body or {}).get("content", {"application/json": {"schema": {}}})
        how = draw(st.integers(0, 9))
        if "multipart/form-data" in content:
            data = draw(st.binary(max_size=2000))
            name = draw(st.sampled_from(["x.csv", "x.xlsx", "x", "../../x.csv"]))
            request["files"] = {"file": (name, data)}
        elif how == 0 and not strict:
            request["content"] = draw(st.binary(max_size=300))
            request["headers"] = {"content-type": "application/json"}
        else:
            schema = next(iter(content.values()), {}).get("schema", {})
            if strict:
                value = draw(_plausible(spec, schema, strict=True))
            else:
                value = draw(_plausible(spec, schema) if how >= 2 else _junk)
            # json.dumps escapes lone surrogates and writes NaN: both reach the server's parser.
            request["content"] = json.dumps(value).encode()
            request["headers"] = {"content-type": "application/json"}
    return request


def _check_answer(request: dict[str, Any], r: httpx.Response) -> None:
    where = f"{request['method']} {request['url']} -> {r.status_code}: {r.text[:300]}"
    assert r.status_code < 500, where
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), where
        assert "field" in body and (body["field"] is None or isinstance(body["field"], str)), where


# -- the run ---------------------------------------------------------------------------------
@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-gateway", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)


@pytest.mark.timeout(300 + EXAMPLES)
def test_no_input_gets_a_5xx_or_corrupts_the_store(
    tmp_path: Path, loop_thread: asyncio.AbstractEventLoop
) -> None:
    config = make_config(tmp_path, http={"port": 0, "tokens": HTTP_TOKENS})
    gw = Gateway(config)
    _run(loop_thread, gw.start())
    try:
        assert gw.api is not None
        base = f"http://127.0.0.1:{gw.api.port}"
        headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
            spec = client.get("/api/v1/openapi.json").json()
            ops = _operations(spec)
            assert any(path == "/api/v1/users" for _, path, _ in ops)
            seen: set[str] = set()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(_request(spec, ops))
            def one(request: dict[str, Any]) -> None:
                request = dict(request)
                seen.add(request.pop("op"))
                _check_answer(request, client.request(**request))

            one()
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/api/v1/auth/me").status_code == 200
            # The draws spread over the routes. Not to half of them: Hypothesis builds many
            # examples by mutating earlier ones, which keeps their route, so 160 examples reach
            # about 30 to 33 of 58 routes (29 seen once), whatever the seed.
            assert len(seen) > len(ops) // 3, sorted(seen)
        _run(loop_thread, gw.store.flush())
        db = sqlite3.connect(config.store.path)
        kinds = [k for (k,) in db.execute("SELECT DISTINCT kind FROM records")]
        db.close()
        for kind in kinds:
            for key, data in gw.store.load_records(kind):
                assert isinstance(key, str) and isinstance(data, dict)
        assert all(e.id is not None for e in gw.store.load_audit(limit=100_000))
    finally:
        _run(loop_thread, gw.close())
    # A gateway started again on the same store loads everything and answers.
    again = Gateway(config)
    _run(loop_thread, again.start())
    try:
        assert again.api is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{again.api.port}", timeout=30.0) as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            audit = c.get("/api/v1/audit", headers=headers, params={"limit": 500})
            assert audit.status_code == 200 and isinstance(audit.json()["total"], int)
    finally:
        _run(loop_thread, again.close())
