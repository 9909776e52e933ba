"""Units, device accounts and the unknown-devices policy through the HTTP API, with simulated
devices registering with the credentials the API handed out."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]

from gateway.events import DeviceOffline
from gateway.sip import Endpoint
from tests.api.conftest import Api
from tests.conftest import sim, wait_for

pytestmark = pytest.mark.timeout(60)

V1 = "/api/v1"
UNKNOWN = "34020000001320000777"


def csv_rows(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # so that Excel reads UTF-8
    return list(csv.DictReader(io.StringIO(body[3:].decode("utf-8"))))


def xlsx_rows(body: bytes) -> list[dict[str, str]]:
    ws = load_workbook(io.BytesIO(body)).active
    rows = [[c.value for c in row] for row in ws.iter_rows()]
    start = next(i for i, r in enumerate(rows) if "device_id" in r)
    header = rows[start]
    return [dict(zip(header, r, strict=True)) for r in rows[start + 1 :]]


async def new_unit(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"name": "第三中学", "kind": "school", "civil_code": "340211", **fields}
    resp = await api.operator.post(f"{V1}/units", json=body)
    assert resp.status_code == 201, resp.text
    unit: dict[str, Any] = resp.json()
    return unit


async def unit_of(api: Api, unit_id: str) -> dict[str, Any]:
    resp = await api.viewer.get(f"{V1}/units/{unit_id}")
    assert resp.status_code == 200
    unit: dict[str, Any] = resp.json()
    return unit


async def test_onboarding_sheet_register_disable_enable(
    api: Api, device_endpoint: Endpoint
) -> None:
    gw = api.gw
    unit = await new_unit(api, address="合肥市", contact="王老师", phone="0551-1234567")
    assert unit["vo_id"][10:13] == "216" and unit["devices"] == {"total": 0, "online": 0}
    made = await api.operator.post(
        f"{V1}/accounts", json={"unit_id": unit["id"], "name": "教学楼 NVR"}
    )
    assert made.status_code == 201, made.text
    acc = made.json()
    device_id, password = acc["device_id"], acc["password"]
    assert device_id.startswith("340211") and device_id[10:13] == "118"
    assert len(password) >= 16 and any(c.isdigit() for c in password)

    # Viewers list accounts without passwords; operators see them.
    seen = (await api.viewer.get(f"{V1}/accounts", params={"unit": unit["id"]})).json()
    assert seen["total"] == 1 and "password" not in seen["items"][0]
    assert seen["items"][0]["name"] == "教学楼 NVR"
    ops = (await api.operator.get(f"{V1}/accounts", params={"q": "教学楼"})).json()
    assert ops["items"][0]["password"] == password

    # The credential sheet, in both formats.
    assert (await api.viewer.get(f"{V1}/units/{unit['id']}/credentials.csv")).status_code == 403
    sheet = await api.operator.get(f"{V1}/units/{unit['id']}/credentials.csv")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/csv")
    disp = sheet.headers["content-disposition"]
    assert "attachment" in disp and f"{unit['id']}-credentials" in disp and ".csv" in disp
    assert "filename*=UTF-8''%E7%AC%AC" in disp  # 第 in the UTF-8 name
    [row] = csv_rows(sheet.content)
    assert row == {
        "device_id": device_id,
        "name": "教学楼 NVR",
        "password": password,
        "sip_server_id": gw.config.gateway.id,
        "sip_domain": gw.config.gateway.domain,
        "sip_host": "127.0.0.1",
        "sip_port": str(gw.port),
        "transport": "UDP/TCP",
        "unit": "第三中学",
    }
    book = await api.operator.get(f"{V1}/units/{unit['id']}/credentials.xlsx")
    assert book.status_code == 200 and ".xlsx" in book.headers["content-disposition"]
    assert xlsx_rows(book.content) == [row]
    assert (await api.operator.get(f"{V1}/units/{unit['id']}/credentials.pdf")).status_code == 404

    # An NVR configured from the sheet registers, and its channels count for the unit.
    dev = sim(
        device_endpoint,
        gw,
        row["device_id"],
        password=row["password"],
        server_id=row["sip_server_id"],
        domain=row["sip_domain"],
        channel_count=3,
    )
    dev.install()
    assert (await dev.register()).status == 200
    await wait_for(
        lambda: sum(1 for _ in gw.catalog.reported_by(device_id)) >= 3, what="catalog synced"
    )
    shown = await unit_of(api, unit["id"])
    assert shown["devices"] == {"total": 1, "online": 1}
    assert shown["channels"] == {"total": 3, "online": 3}

    # Disabling is a credential change: admin only. The device goes offline at once.
    offline: list[DeviceOffline] = []
    gw.events.subscribe(DeviceOffline, offline.append)
    url = f"{V1}/accounts/{device_id}"
    refused = await api.operator.patch(url, json={"enabled": False})
    assert refused.status_code == 403 and refused.json()["field"] == "enabled"
    assert gw.registrar.get(device_id).online  # type: ignore[union-attr]
    off = await api.admin.patch(url, json={"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert not gw.registrar.get(device_id).online  # type: ignore[union-attr]
    assert offline == [DeviceOffline(device_id, "account revoked")]
    assert (await dev.keepalive()).status == 404
    again = await dev.register()
    assert again.status == 403
    shown = await unit_of(api, unit["id"])
    assert shown["devices"] == {"total": 1, "online": 0}
    assert shown["channels"] == {"total": 3, "online": 0}

    assert (await api.admin.patch(url, json={"enabled": True})).status_code == 200
    assert (await dev.register()).status == 200

    # A new password: the binding made with the old one goes; the old one is refused.
    new = await api.admin.patch(url, json={"password": "NewPass2026abc"})
    assert new.status_code == 200 and new.json()["password"] == "NewPass2026abc"
    assert not gw.registrar.get(device_id).online  # type: ignore[union-attr]
    assert (await dev.register()).status == 403
    dev.password = "NewPass2026abc"
    assert (await dev.register()).status == 200

    # Removing: admin only; afterwards the device is refused like any unknown one would be
    # under reject, or challenged for the default password under accept.
    assert (await api.operator.delete(url)).status_code == 403
    assert (await api.admin.delete(url)).status_code == 204
    assert not gw.registrar.get(device_id).online  # type: ignore[union-attr]
    assert (await dev.register()).status == 403
    assert (await api.viewer.get(url)).status_code == 404

    # The audit log has every write, and no password in it.
    audit = gw.store.load_audit(limit=100)
    assert any(e.action.startswith("PATCH /api/v1/accounts/") for e in audit)
    assert any("disabled" in e.detail for e in audit)
    assert not any(password in e.detail or "NewPass2026abc" in e.detail for e in audit)


async def test_unknown_devices_policy(api: Api, device_endpoint: Endpoint) -> None:
    gw = api.gw
    url = f"{V1}/settings/registration"
    assert (await api.viewer.get(url)).json() == {"unknown_devices": "accept"}
    stranger = sim(device_endpoint, gw, UNKNOWN)  # the default password
    assert (await stranger.register()).status == 200
    assert (await api.operator.put(url, json={"unknown_devices": "reject"})).status_code == 403
    bad = await api.admin.put(url, json={"unknown_devices": "maybe"})
    assert bad.status_code == 422 and bad.json()["field"] == "unknown_devices"
    ok = await api.admin.put(url, json={"unknown_devices": "reject"})
    assert ok.status_code == 200 and ok.json() == {"unknown_devices": "reject"}
    # Registered without an account: it may not stay.
    assert not gw.registrar.get(UNKNOWN).online  # type: ignore[union-attr]
    refused = await stranger.register()
    assert refused.status == 403 and "unknown" in refused.reason
    # Given an account, it registers again.
    made = await api.operator.post(
        f"{V1}/accounts", json={"device_id": UNKNOWN, "password": "abc12345"}
    )
    assert made.status_code == 201
    stranger.password = "abc12345"
    assert (await stranger.register()).status == 200


async def test_a_new_account_ends_a_binding_made_with_the_default_password(
    api: Api, device_endpoint: Endpoint
) -> None:
    """Under ``accept`` a device without an account registers with the default password; once
    it is given an account with another password (or a disabled one) that binding is no longer
    valid and goes at once, as for a changed password. One given the default password stays."""
    gw = api.gw
    default = gw.directory.auth.password
    ids = [f"3402000000132000078{n}" for n in range(3)]
    devs = [sim(device_endpoint, gw, i) for i in ids]  # the default password
    for dev in devs:
        assert (await dev.register()).status == 200
    offline: list[DeviceOffline] = []
    gw.events.subscribe(DeviceOffline, offline.append)
    generated = await api.admin.post(f"{V1}/accounts", json={"device_id": ids[0]})
    assert generated.status_code == 201 and generated.json()["password"] != default
    disabled = await api.admin.post(
        f"{V1}/accounts", json={"device_id": ids[1], "password": default, "enabled": False}
    )
    assert disabled.status_code == 201
    same = await api.admin.post(f"{V1}/accounts", json={"device_id": ids[2], "password": default})
    assert same.status_code == 201
    assert [gw.registrar.get(i).online for i in ids] == [False, False, True]  # type: ignore[union-attr]
    assert offline == [
        DeviceOffline(ids[0], "account added"),
        DeviceOffline(ids[1], "account added"),
    ]
    assert (await devs[0].register()).status == 403  # the old (default) password
    assert (await devs[1].register()).status == 403  # disabled
    devs[0].password = generated.json()["password"]
    assert (await devs[0].register()).status == 200


async def test_import_reports_bad_rows_and_applies_good_ones(api: Api) -> None:
    unit = await new_unit(api)
    await api.operator.post(
        f"{V1}/accounts", json={"device_id": "34021100001180000050", "password": "keepme123"}
    )
    text = (
        "device_id,name,password,unit\r\n"
        "34021100001180000001,东门 NVR,Secret1234,第三中学\r\n"
        "3402110000118000000X,西门 NVR,,第三中学\r\n"
        f",北门 NVR,,{unit['id']}\r\n"
        "34021100001180000003,南门,,no such unit\r\n"
        "34021100001180000050,renamed,changed123,\r\n"
        "\r\n"
    )
    files = {"file": ("units.csv", text.encode("gb18030"), "text/csv")}
    resp = await api.operator.post(f"{V1}/accounts/import", files=files)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["created"] == 2 and report["updated"] == 0
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (3, "device_id"),
        (5, "unit"),
        (6, "password"),  # an operator may not change a password
    ]
    assert "20-digit" in report["errors"][0]["error"]
    got = (await api.operator.get(f"{V1}/accounts", params={"unit": unit["id"]})).json()
    names = {a["name"]: a for a in got["items"]}
    assert set(names) == {"东门 NVR", "北门 NVR"}
    assert names["东门 NVR"]["password"] == "Secret1234"
    assert len(names["北门 NVR"]["password"]) >= 16

    # The admin may; an XLSX with a title row; the export imports back unchanged.
    wb = Workbook()
    ws = wb.active
    ws.append(["导入"])
    ws.append(["device_id", "name", "password", "unit"])
    ws.append(["34021100001180000050", "renamed", "changed123", "第三中学"])
    ws.append([34021100001180000099, "a number", None, None])
    buf = io.BytesIO()
    wb.save(buf)
    xlsx = ("a.xlsx", buf.getvalue(), "application/octet-stream")
    report = (await api.admin.post(f"{V1}/accounts/import", files={"file": xlsx})).json()
    assert report["updated"] == 1 and [(e["row"], e["field"]) for e in report["errors"]] == [
        (4, "device_id")
    ]
    export = await api.operator.get(f"{V1}/accounts/export.xlsx", params={"unit": unit["id"]})
    assert export.status_code == 200
    rows = xlsx_rows(export.content)
    assert {r["name"]: r["password"] for r in rows}["renamed"] == "changed123"
    back = ("export.xlsx", export.content, "application/octet-stream")
    again = (await api.operator.post(f"{V1}/accounts/import", files={"file": back})).json()
    assert again["errors"] == [] and again["updated"] == 3 and again["created"] == 0
    csv_export = await api.operator.get(f"{V1}/accounts/export.csv")
    assert len(csv_rows(csv_export.content)) == 3
    assert (await api.viewer.get(f"{V1}/accounts/export.csv")).status_code == 403

    junk = {"file": ("x.xlsx", b"PK\x03\x04 not a zip", "application/octet-stream")}
    broken = await api.operator.post(f"{V1}/accounts/import", files=junk)
    assert broken.status_code == 422 and broken.json()["field"] == "file"
    headerless = {"file": ("x.csv", b"a,b\n1,2\n", "text/csv")}
    assert (await api.operator.post(f"{V1}/accounts/import", files=headerless)).status_code == 422


async def test_unit_writes_roles_and_errors(api: Api) -> None:
    assert (await api.viewer.post(f"{V1}/units", json={"name": "x"})).status_code == 403
    for body, field in [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "kind": "castle"}, "kind"),
        ({"name": "ok", "civil_code": "123"}, "civil_code"),
        ({"name": "ok", "vo_id": "1"}, "vo_id"),
        ({}, "name"),
    ]:
        resp = await api.operator.post(f"{V1}/units", json=body)
        assert resp.status_code == 422 and resp.json()["field"] == field, (body, resp.text)
    unit = await new_unit(api)
    patched = await api.operator.patch(
        f"{V1}/units/{unit['id']}", json={"name": "第三中学 (新校区)"}
    )
    assert patched.status_code == 200 and patched.json()["vo_id"] == unit["vo_id"]
    bad = await api.operator.patch(f"{V1}/units/{unit['id']}", json={"civil_code": "1"})
    assert bad.status_code == 422 and bad.json()["field"] == "civil_code"
    assert (await api.viewer.get(f"{V1}/units/unope")).status_code == 404
    listed = (await api.viewer.get(f"{V1}/units", params={"q": "新校区"})).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == unit["id"]
    assert (await api.viewer.get(f"{V1}/units", params={"limit": 501})).status_code == 422

    acc = await api.operator.post(f"{V1}/accounts", json={"unit_id": unit["id"]})
    dup = await api.operator.post(f"{V1}/accounts", json={"device_id": acc.json()["device_id"]})
    assert dup.status_code == 409 and dup.json()["field"] == "device_id"
    nounit = await api.operator.post(f"{V1}/accounts", json={"unit_id": "unope"})
    assert nounit.status_code == 404 and nounit.json()["field"] == "unit_id"
    weak = await api.operator.post(f"{V1}/accounts", json={"password": 'a"b'})
    assert weak.status_code == 422 and weak.json()["field"] == "password"
    busy = await api.operator.delete(f"{V1}/units/{unit['id']}")
    assert busy.status_code == 409
    assert (await api.operator.delete(f"{V1}/units/{unit['id']}?force=true")).status_code == 204
    orphan = (await api.viewer.get(f"{V1}/accounts", params={"unit": "_unassigned"})).json()
    assert orphan["total"] == 1 and orphan["items"][0]["unit_id"] is None


async def test_changes_persist_and_the_toml_seeds_only_once(
    start_api: Callable[..., Awaitable[Api]], device_endpoint: Endpoint
) -> None:
    seeded = "34020000001180000042"
    auth = {"devices": [{"id": seeded, "password": "fromToml1"}], "unknown_devices": "accept"}
    api = await start_api(auth=auth)
    first = (await api.operator.get(f"{V1}/accounts")).json()["items"]
    assert [(a["device_id"], a["password"]) for a in first] == [(seeded, "fromToml1")]
    unit = await new_unit(api)
    change = {"password": "fromApi123", "unit_id": unit["id"], "name": "seeded NVR"}
    assert (await api.admin.patch(f"{V1}/accounts/{seeded}", json=change)).status_code == 200
    added = (await api.operator.post(f"{V1}/accounts", json={"unit_id": unit["id"]})).json()
    put = await api.admin.put(f"{V1}/settings/registration", json={"unknown_devices": "reject"})
    assert put.status_code == 200
    await api.gw.close()

    # The same store and the same TOML: the API's changes win.
    api2 = await start_api(auth=auth)
    got = {a["device_id"]: a for a in (await api2.operator.get(f"{V1}/accounts")).json()["items"]}
    assert got[seeded]["password"] == "fromApi123" and got[seeded]["unit_id"] == unit["id"]
    assert got[added["device_id"]]["password"] == added["password"]
    assert (await unit_of(api2, unit["id"]))["name"] == "第三中学"
    policy = (await api2.viewer.get(f"{V1}/settings/registration")).json()
    assert policy == {"unknown_devices": "reject"}
    dev = sim(device_endpoint, api2.gw, seeded, password="fromApi123")
    assert (await dev.register()).status == 200
    # A new ID continues after the ones made before the restart.
    more = (await api2.operator.post(f"{V1}/accounts", json={"unit_id": unit["id"]})).json()
    assert more["device_id"] > added["device_id"]


def _xlsx(*rows: list[Any]) -> bytes:
    wb = Workbook()
    for row in rows:
        wb.active.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@pytest.mark.timeout(30)
def test_sheet_reading_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A workbook that expands past the cap is refused before openpyxl reads it; files with
    more rows than the cap, or no header, are refused as a whole; cells stay text."""
    from gateway.api import sheets

    book = _xlsx(["device_id", "name"], ["34020000001180000001", " 东门 "])
    rows = sheets.read_rows(book)
    assert [(r.row, r.device_id, r.name) for r in rows] == [(2, "34020000001180000001", "东门")]
    monkeypatch.setattr(sheets, "MAX_XLSX_BYTES", 1000)
    with pytest.raises(sheets.SheetError, match="expands"):
        sheets.read_rows(book)
    monkeypatch.setattr(sheets, "MAX_ROWS", 3)
    many = "device_id\n" + "".join(f"3402000000118000000{i}\n" for i in range(5))
    with pytest.raises(sheets.SheetError, match="more than 3 rows"):
        sheets.read_rows(many.encode())
    for junk in (b"", b"\x00\x01\x02", b"\xff\xfe\xfd", b"a,b\n" * 20, b'"unterminated\n'):
        with pytest.raises(sheets.SheetError):
            sheets.read_rows(junk)
    # What the gateway writes never turns into a formula or a number in Excel.
    written = sheets.to_xlsx("t", ["device_id", "name"], [["34020000001180000001", "=1+1"]])
    ws = load_workbook(io.BytesIO(written)).active
    assert [c.data_type for c in ws[3]] == ["s", "s"] and ws["B3"].value == "=1+1"


def _far_cell_book(cell: str, *, dimension: bool = True) -> bytes:
    """A tiny workbook with a header and one cell at ``cell``; without ``dimension`` the
    worksheet's ``<dimension>`` element is dropped (openpyxl then cannot know the size)."""
    wb = Workbook()
    wb.active.append(["device_id", "name"])
    wb.active[cell] = "x"
    buf = io.BytesIO()
    wb.save(buf)
    if dimension:
        return buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            part = zin.read(info.filename)
            if info.filename.startswith("xl/worksheets/"):
                part = re.sub(rb"<dimension [^>]*/>", b"", part)
            zout.writestr(info, part)
    return out.getvalue()


@pytest.mark.timeout(30)  # the unbounded reading took over a minute
async def test_a_workbook_spanning_far_is_refused_at_once(api: Api) -> None:
    """openpyxl pads rows and columns out to the sheet's dimension: a 5 KB file with a cell at
    XFD200000 is refused from its declared size, and without a dimension the rows scanned
    (empty ones included) are counted and only the first columns read."""
    from gateway.api import sheets

    far = _far_cell_book("XFD200000")
    assert len(far) < 10_000
    files = {"file": ("far.xlsx", far, "application/octet-stream")}
    resp = await api.admin.post(f"{V1}/accounts/import", files=files)
    assert resp.status_code == 422 and resp.json()["field"] == "file"
    assert "200000 rows" in resp.json()["error"]
    with pytest.raises(sheets.SheetError, match="16384 columns"):
        sheets.read_rows(_far_cell_book("XFD3"))
    with pytest.raises(sheets.SheetError, match=f"over {sheets.MAX_SCAN_ROWS} rows"):
        sheets.read_rows(_far_cell_book("XFD200000", dimension=False))
    # Without a dimension a wide row is cut to the columns read; the table still imports.
    rows = sheets.read_rows(_far_cell_book("XFD3", dimension=False))
    assert rows == []  # row 3's cells past the cut are not read: an empty row
