"""The directory of units and device accounts: checks naming the field, IDs made in O(1),
bulk imports, listeners, persistence and the first-start seed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.directory import (
    ACCOUNT_ADDED,
    ACCOUNT_CHANGED,
    ACCOUNT_REVOKED,
    POLICY_CHANGED,
    UNIT_CHANGED,
    Directory,
    DirectoryError,
    ImportRow,
)
from gateway.settings import AuthSection, DevicePassword, Identity
from gateway.store import MemoryStore

DEV = "34020000001320000001"


def make(store: MemoryStore | None = None, **auth: object) -> Directory:
    d = Directory(
        AuthSection(**auth),  # type: ignore[arg-type]
        Identity(civil_code="34020000"),
        store or MemoryStore(),
    )
    d.load()
    return d


class Heard:
    def __init__(self, d: Directory) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        d.listeners.append(self)

    def __call__(self, what: str, ids: Iterable[str]) -> None:
        self.calls.append((what, sorted(ids)))


def refused(fn: object, *args: object, **kw: object) -> DirectoryError:
    with pytest.raises(DirectoryError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "=cmd|' /C calc'!A0"}, "name"),
        ({"name": "ok", "kind": "castle"}, "kind"),
        ({"name": "ok", "civil_code": "123"}, "civil_code"),
        ({"name": "ok", "civil_code": "34020000x"}, "civil_code"),
        ({"name": "ok", "civil_code": "３４"}, "civil_code"),  # full-width digits
        ({"name": "ok", "contact": "c" * 101}, "contact"),
        ({"name": "ok", "vo_id": "1"}, "vo_id"),
    ],
)
def test_unit_checks_name_the_field(values: dict[str, str], field: str) -> None:
    d = make()
    name = values.pop("name")
    err = refused(d.add_unit, name, **values)
    assert err.field == field and err.status == 422 and field in str(err)
    assert d.units == {}


def test_unit_ok_and_civil_codes() -> None:
    d = make()
    for code in ("", "34", "3402", "340200", "34020000"):
        u = d.add_unit(f"  学校 {code} ", kind="school", civil_code=code)
        assert u.name == f"学校 {code}".strip() and u.civil_code == code
        assert len(u.vo_id) == 20 and u.vo_id[10:13] == "216"
        assert u.vo_id.startswith((code or "34020000").ljust(8, "0"))
    assert len({u.vo_id for u in d.units.values()}) == 5


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"device_id": "3402000000132000000"}, "device_id"),  # 19 digits
        ({"device_id": "3402000000132000000x"}, "device_id"),
        ({"device_id": "３４０２０００００００１３２００００００１"}, "device_id"),
        ({"device_id": DEV, "password": ""}, "password"),
        ({"device_id": DEV, "password": "p" * 65}, "password"),
        ({"device_id": DEV, "password": 'pa"ss'}, "password"),
        ({"device_id": DEV, "password": "pässword"}, "password"),
        ({"device_id": DEV, "password": "tab\there"}, "password"),
        ({"device_id": DEV, "password": "=1+1"}, "password"),
        ({"device_id": DEV, "name": "n" * 101}, "name"),
        ({"device_id": DEV, "unit_id": "unope"}, "unit_id"),
    ],
)
def test_account_checks_name_the_field(kw: dict[str, str], field: str) -> None:
    d = make()
    heard = Heard(d)
    device_id = kw.pop("device_id")
    err = refused(d.add_account, device_id, **kw)
    assert err.field == field
    assert d.accounts == {} and heard.calls == []


def test_passwords_of_64_printable_characters_are_taken() -> None:
    d = make()
    pw = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"=+-@')[:64]
    assert d.add_account(DEV, password=pw).password == pw
    assert d.password(DEV) == pw


def test_generated_ids_and_passwords() -> None:
    d = make()
    unit = d.add_unit("一中", civil_code="340211")
    a = d.add_account(unit_id=unit.id)
    b = d.add_account(unit_id=unit.id)
    assert a.device_id == "34021100001180000001" and b.device_id == "34021100001180000002"
    assert len(a.password) >= 16 and a.password != b.password
    assert a.password.isalnum()
    # Without a unit: the gateway's civil code.
    assert d.add_account().device_id == "34020000001180000001"
    # A hand-made ID moves the serial past it; a taken one (a registered device) is skipped.
    d.add_account("34021100001180000007")
    assert d.new_device_id(unit.id) == "34021100001180000008"
    skip = {"34021100001180000008"}
    assert d.new_device_id(unit.id, taken=skip.__contains__) == "34021100001180000009"


def test_new_device_id_does_not_scan_the_accounts() -> None:
    """Making IDs one after another costs O(1) each: count the membership tests made."""
    d = make()
    unit = d.add_unit("bank", kind="bank", civil_code="34020000")

    class Counting(dict[str, object]):
        lookups = 0

        def __contains__(self, key: object) -> bool:
            Counting.lookups += 1
            return super().__contains__(key)

    d.accounts = Counting(d.accounts)  # type: ignore[assignment]
    n = 500
    for _ in range(n):
        d.add_account(unit_id=unit.id, password="secret123")
    # A scan from serial 1 would make n*(n+1)/2 = 125,250 tests.
    assert Counting.lookups <= 3 * n
    assert len(d.members(unit.id)) == n


def test_ids_continue_after_a_reload() -> None:
    store = MemoryStore()
    d = make(store)
    u = d.add_unit("u", civil_code="34020000")
    for _ in range(3):
        d.add_account(unit_id=u.id)
    again = make(store)
    assert again.new_device_id(u.id) == "34020000001180000004"
    v = again.add_unit("v", civil_code="34020000")
    assert v.vo_id != u.vo_id and v.vo_id == "34020000002160000002"


def test_listeners_hear_what_changed() -> None:
    d = make()
    heard = Heard(d)
    u = d.add_unit("u")
    d.add_account(DEV, password="secret1", unit_id=u.id)
    d.update_account(DEV, name="gate")
    d.update_account(DEV, password="secret1")  # the same password: nothing revoked
    d.update_account(DEV, password="secret2")
    d.update_account(DEV, enabled=False)
    d.update_account(DEV, enabled=True)
    d.update_unit(u.id, name="u2")
    d.set_unknown_devices("reject")
    d.set_unknown_devices("reject")  # unchanged: not heard
    d.remove_account(DEV)
    assert heard.calls == [
        (ACCOUNT_ADDED, [DEV]),
        (ACCOUNT_CHANGED, [DEV]),
        (ACCOUNT_CHANGED, [DEV]),
        (ACCOUNT_REVOKED, [DEV]),
        (ACCOUNT_REVOKED, [DEV]),
        (ACCOUNT_CHANGED, [DEV]),
        (UNIT_CHANGED, [DEV]),
        (POLICY_CHANGED, []),
        (ACCOUNT_REVOKED, [DEV]),
    ]
    assert refused(d.set_unknown_devices, "maybe").field == "unknown_devices"


def test_update_refused_changes_nothing() -> None:
    d = make()
    d.add_account(DEV, password="secret1", name="a")
    err = refused(d.update_account, DEV, name="b", password='bad"')
    assert err.field == "password"
    acc = d.accounts[DEV]
    assert (acc.name, acc.password) == ("a", "secret1")
    assert refused(d.update_account, DEV, unit_id="unope").status == 404
    assert refused(d.update_account, "34020000001320000099", name="x").status == 404
    assert refused(d.update_account, DEV, colour="red").field == "colour"


def test_remove_unit_needs_force_with_devices() -> None:
    d = make()
    u = d.add_unit("u")
    d.add_account(DEV, unit_id=u.id)
    assert refused(d.remove_unit, u.id).status == 409
    d.remove_unit(u.id, force=True)
    assert d.accounts[DEV].unit_id is None and u.id not in d.units
    assert d.unit_of(DEV) is None


def test_bulk_import_applies_good_rows_and_reports_bad_ones() -> None:
    store = MemoryStore()
    d = make(store)
    heard = Heard(d)
    u = d.add_unit("第三中学", kind="school", civil_code="340211")
    d.add_account(DEV, password="oldpass1", name="old")
    saves: list[str] = []
    real_save = store.save_record

    def counting_save(kind: str, key: str, data: dict[str, object]) -> None:
        saves.append(f"{kind}:{key}")
        real_save(kind, key, data)

    store.save_record = counting_save  # type: ignore[method-assign]
    heard.calls.clear()
    report = d.import_accounts(
        [
            ImportRow(2, device_id="34021100001180000101", name="NVR 1", unit="第三中学"),
            ImportRow(3, device_id="bad", name="NVR 2"),
            ImportRow(4, device_id=None, name="NVR 3", unit=u.id, password="given123"),
            ImportRow(5, device_id=DEV, name="renamed"),
            ImportRow(6, device_id="34021100001180000101", name="twice"),
            ImportRow(7, device_id="34021100001180000150", unit="no such unit"),
            ImportRow(8, device_id="34021100001180000103", password='no"quotes'),
            ImportRow(9, error="device_id: stored as a number", error_field="device_id"),
        ]
    )
    assert len(report.created) == 2 and report.updated == [DEV]
    assert [(e.row, e.field) for e in report.errors] == [
        (3, "device_id"),
        (6, "device_id"),
        (7, "unit"),
        (8, "password"),
        (9, "device_id"),
    ]
    assert d.accounts[DEV].name == "renamed" and d.accounts[DEV].password == "oldpass1"
    generated = next(i for i in report.created if i != "34021100001180000101")
    assert d.accounts[generated].password == "given123" and d.unit_of(generated) == u
    assert d.unit_of("34021100001180000101") == u
    # One save per account applied; listeners once per kind, with all the IDs.
    assert sorted(saves) == sorted(f"account:{i}" for i in [*report.created, DEV])
    assert heard.calls == [(ACCOUNT_ADDED, sorted(report.created)), (ACCOUNT_CHANGED, [DEV])]


def test_bulk_import_password_changes_need_the_right() -> None:
    d = make()
    d.add_account(DEV, password="oldpass1")
    heard = Heard(d)
    report = d.import_accounts(
        [ImportRow(2, device_id=DEV, password="newpass1")], may_change_password=False
    )
    assert [(e.row, e.field) for e in report.errors] == [(2, "password")]
    assert d.password(DEV) == "oldpass1" and heard.calls == []
    same = d.import_accounts(
        [ImportRow(2, device_id=DEV, password="oldpass1")], may_change_password=False
    )
    assert same.errors == [] and same.updated == [DEV]
    report = d.import_accounts([ImportRow(2, device_id=DEV, password="newpass1")])
    assert report.errors == [] and d.password(DEV) == "newpass1"
    assert heard.calls[-1] == (ACCOUNT_REVOKED, [DEV])


def test_persistence_and_seed_only_at_first_start() -> None:
    store = MemoryStore()
    seeded = {"devices": (DevicePassword(id=DEV, password="from-toml"),)}
    d = make(store, **seeded)
    assert d.password(DEV) == "from-toml"
    d.update_account(DEV, password="from-api1", enabled=False)
    u = d.add_unit("u", kind="bank")
    d.set_unknown_devices("reject")
    # Next start: the TOML's password and policy are not applied again.
    again = make(store, **seeded, unknown_devices="accept")
    assert again.accounts[DEV].password == "from-api1" and not again.accounts[DEV].enabled
    assert again.password(DEV) is None
    assert again.unknown_devices == "reject" and again.units[u.id].kind == "bank"
    assert again.password("34020000001320000777") is None


def test_policy_and_default_password() -> None:
    d = make(password="default1")
    assert d.password("34020000001320000777") == "default1"
    d.set_unknown_devices("reject")
    assert d.password("34020000001320000777") is None


def test_unit_names_are_unique() -> None:
    d = make()
    a = d.add_unit("一中")
    b = d.add_unit("二中")
    err = refused(d.add_unit, " 一中 ")
    assert err.status == 409 and err.field == "name"
    assert refused(d.update_unit, b.id, name="一中").status == 409
    assert d.update_unit(a.id, name="一中").name == "一中"  # its own name is fine
    assert d.find_unit("二中") == b and d.find_unit(a.id) == a and d.find_unit("三中") is None


def test_a_failing_listener_does_not_stop_the_others() -> None:
    d = make()

    def broken(what: str, ids: Iterable[str]) -> None:
        raise RuntimeError("listener bug")

    d.listeners.append(broken)
    heard = Heard(d)
    d.add_account(DEV)
    assert heard.calls == [(ACCOUNT_ADDED, [DEV])] and DEV in d.accounts


@settings(max_examples=150, deadline=None)
@given(
    name=st.text(max_size=120),
    kind=st.sampled_from(["school", "bank", "", "castle", "Other"]),
    civil=st.text(alphabet="0123456789x", max_size=9),
    device_id=st.one_of(st.none(), st.text(alphabet="0123456789a", min_size=18, max_size=21)),
    password=st.one_of(st.none(), st.text(max_size=70)),
)
def test_hostile_values_are_refused_or_taken_never_half(
    name: str, kind: str, civil: str, device_id: str | None, password: str | None
) -> None:
    store = MemoryStore()
    d = make(store)
    try:
        unit = d.add_unit(name, kind=kind, civil_code=civil)
    except DirectoryError as exc:
        assert exc.field in ("name", "kind", "civil_code") and exc.status == 422
        assert d.units == {} and store.load_records("unit") == []
        unit = None
    try:
        acc = d.add_account(
            device_id, password=password, name=name, unit_id=unit.id if unit else None
        )
    except DirectoryError as exc:
        assert exc.field in ("device_id", "password", "name")
        assert d.accounts == {} and store.load_records("account") == []
    else:
        assert len(acc.device_id) == 20 and acc.device_id.isdigit()
        assert 1 <= len(acc.password) <= 64 and '"' not in acc.password
        assert dict(store.load_records("account"))[acc.device_id]["password"] == acc.password


async def test_a_big_import_gives_the_event_loop_turns() -> None:
    d = make()
    heard = Heard(d)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    rows = [ImportRow(i + 2, name=f"NVR {i}", password="secret123") for i in range(2000)]
    report = await d.import_accounts_async(rows, batch=100)
    done = True
    await task
    assert len(report.created) == 2000 and report.errors == []
    assert ticks >= 19  # a turn for the rest of the loop every 100 rows
    assert heard.calls == [(ACCOUNT_ADDED, sorted(report.created))]  # still once


async def test_a_cancelled_import_still_tells_the_listeners() -> None:
    """The rows applied before a cancellation are stored: the listeners hear of them (and so
    the registrar's revocations happen) even though the import did not finish."""
    d = make()
    heard = Heard(d)
    rows = [ImportRow(i + 2, name=f"NVR {i}", password="secret123") for i in range(1000)]
    task = asyncio.create_task(d.import_accounts_async(rows, batch=100))
    for _ in range(3):  # let it apply a few batches
        await asyncio.sleep(0)
    applied = sorted(d.accounts)
    assert 0 < len(applied) < 1000
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert heard.calls == [(ACCOUNT_ADDED, sorted(d.accounts))]
