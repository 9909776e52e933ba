"""Social units and the device accounts that may register, changeable while the gateway runs.

A *unit* (社会单位: an enterprise, school, bank, hospital...) is what operators think in: it has
a name, a kind, an address, a contact and a civil code, and owns device accounts. Each unit
has a virtual-organisation ID (type 216, GB/T 28181-2022 Annex D) under which the uppers see
its cameras; it is made once, when the unit is created, and never changes (an upper's tree
keys on it). A *device account* is a device ID allowed to register, with its SIP digest
password (kept in clear: digest authentication needs it, and the unit's credential sheet shows
it), its unit, and whether it is enabled.

The policy for devices with no account (``unknown_devices``: accept them with the default
password, or reject them) is kept here too. At the first start (no ``directory`` marker in the
store) the TOML file's ``[auth]`` section seeds the accounts and the policy; after that the
store is the truth and the API changes it.

Everything is kept in memory (read on every REGISTER) and written through to the store as
records (kinds ``unit``, ``account``, ``directory``), one record per unit or account changed.

Every change is checked first (:class:`DirectoryError` names the field and the HTTP status the
API answers) and nothing is stored or changed for a refused one. Listeners hear what changed,
once per operation (a bulk import is one call per kind of change, with all its IDs):

* ``ACCOUNT_ADDED``: new accounts;
* ``ACCOUNT_CHANGED``: name or unit changed;
* ``ACCOUNT_REVOKED``: removed, disabled or given a new password: a binding made with the old
  credentials must not be served any more (the registrar drops it);
* ``UNIT_CHANGED``: the unit of these devices was edited;
* ``UNIT_REMOVED``: a unit was removed, its devices (if any) unassigned; told even when it
  had none, so that whoever refers to units (an upper's share) can drop it;
* ``POLICY_CHANGED``: the unknown-devices policy changed (no IDs: whoever registered without an
  account may have lost the right).
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import structlog

from gateway.settings import AuthSection, Identity
from gateway.store import Store

log = structlog.get_logger("gateway.directory")

UNIT = "unit"
ACCOUNT = "account"
META = "directory"
UnitKind = Literal["enterprise", "school", "bank", "hospital", "government", "other"]
UNIT_KINDS: tuple[str, ...] = ("enterprise", "school", "bank", "hospital", "government", "other")
Policy = Literal["accept", "reject"]
POLICIES: tuple[str, ...] = ("accept", "reject")
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 16
MAX_PASSWORD = 64
MAX_NAME = 100
MAX_TEXT = 200  # address
MAX_PHONE = 32
MAX_SERIAL = 999_999  # the 6-digit serial after the network digit (GB/T 28181-2022 Annex D)
DEVICE_TYPE_NVR = "118"
VIRTUAL_ORG = "216"

ACCOUNT_ADDED = "account.added"
ACCOUNT_CHANGED = "account.changed"
ACCOUNT_REVOKED = "account.revoked"
UNIT_CHANGED = "unit.changed"
UNIT_REMOVED = "unit.removed"
POLICY_CHANGED = "policy.changed"

# A cell starting with one of these is a formula to a spreadsheet: names and passwords go into
# the credential sheet, so they may not start with one (CSV injection).
_FORMULA_START = ("=", "+", "-", "@")
UNIT_FIELDS = ("name", "kind", "address", "contact", "phone", "civil_code")
ACCOUNT_FIELDS = ("name", "unit_id", "password", "enabled")


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A strong password every NVR accepts: letters and digits only (many refuse symbols),
    at least one of each kind."""
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if (
            any(c.isdigit() for c in pw)
            and any(c.islower() for c in pw)
            and any(c.isupper() for c in pw)
        ):
            return pw


@dataclass(slots=True)
class Unit:
    id: str
    name: str
    kind: str = "other"
    address: str = ""
    contact: str = ""
    phone: str = ""
    civil_code: str = ""
    vo_id: str = ""
    created_at: float = 0.0


@dataclass(slots=True)
class Account:
    device_id: str
    password: str
    name: str = ""
    unit_id: str | None = None
    enabled: bool = True
    created_at: float = 0.0


class DirectoryError(ValueError):
    """A change refused; ``field`` names what was wrong (the API answers ``status`` with it)."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


# -- checks (each raises DirectoryError naming the field) ------------------------------------
def _text(value: object, name: str, *, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise DirectoryError(f"{name}: must be a string", name)
    value = value.strip()
    if len(value) < low:
        raise DirectoryError(f"{name}: must not be empty", name)
    if len(value) > high:
        raise DirectoryError(f"{name}: at most {high} characters", name)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise DirectoryError(f"{name}: must not contain control characters", name)
    return value


def check_name(value: object, name: str = "name", *, required: bool = False) -> str:
    """A unit's or a device's name: 1 (when required) to 100 characters, no control characters,
    not starting like a spreadsheet formula."""
    text = _text(value, name, low=1 if required else 0, high=MAX_NAME)
    if text.startswith(_FORMULA_START):
        raise DirectoryError(f"{name}: must not start with = + - or @", name)
    return text


def check_kind(value: object) -> str:
    if value not in UNIT_KINDS:
        raise DirectoryError(f"kind: must be one of {', '.join(UNIT_KINDS)}", "kind")
    return str(value)


def check_civil_code(value: object) -> str:
    """Empty, or a civil-region code of 2, 4, 6 or 8 digits (GB/T 2260 and its subdivisions)."""
    if value is None or value == "":
        return ""
    if not (
        isinstance(value, str)
        and len(value) in (2, 4, 6, 8)
        and value.isascii()
        and value.isdigit()
    ):
        raise DirectoryError("civil_code: must be empty or 2, 4, 6 or 8 digits", "civil_code")
    return value


def check_device_id(value: object) -> str:
    if not (isinstance(value, str) and len(value) == 20 and value.isascii() and value.isdigit()):
        raise DirectoryError("device_id: must be a 20-digit GB/T 28181 ID", "device_id")
    return value


def check_password(value: object) -> str:
    """1-64 printable ASCII characters without ``"`` (some devices put it in a quoted string
    in their configuration), not starting like a spreadsheet formula."""
    if not isinstance(value, str) or not value:
        raise DirectoryError("password: must not be empty", "password")
    if len(value) > MAX_PASSWORD:
        raise DirectoryError(f"password: at most {MAX_PASSWORD} characters", "password")
    if not all(0x20 <= ord(c) <= 0x7E and c != '"' for c in value):
        raise DirectoryError('password: printable ASCII only, and no "', "password")
    if value.startswith(_FORMULA_START):
        raise DirectoryError("password: must not start with = + - or @", "password")
    return value


def _check_unit_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            out[key] = check_name(value, required=True)
        elif key == "kind":
            out[key] = check_kind(value)
        elif key == "civil_code":
            out[key] = check_civil_code(value)
        elif key == "address":
            out[key] = _text(value, key, low=0, high=MAX_TEXT)
        elif key == "contact":
            out[key] = check_name(value, key)
        elif key == "phone":
            out[key] = _text(value, key, low=0, high=MAX_PHONE)
        else:
            raise DirectoryError(f"{key}: not a field of a unit", key)
    return out


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The stored fields this version knows (a record written by a newer one loads)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One row of a bulk import: what the file says (None: the column is absent or empty, so
    an existing account keeps its value). ``unit`` is a unit's ID or its exact name."""

    row: int
    device_id: str | None = None
    name: str | None = None
    password: str | None = None
    unit: str | None = None
    # Already found wrong while reading the file (e.g. an ID stored as a number).
    error: str | None = None
    error_field: str | None = None


@dataclass(slots=True)
class ImportProblem:
    row: int
    field: str | None
    error: str


@dataclass(slots=True)
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    errors: list[ImportProblem] = field(default_factory=list)


@dataclass
class Directory:
    """Units, accounts and the unknown-device policy (see the module docstring)."""

    auth: AuthSection
    identity: Identity
    store: Store
    clock: Callable[[], float] = time.time
    units: dict[str, Unit] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    unknown_devices: Policy = "accept"
    # Called with (what, device IDs) after each change; ``what`` is one of the constants above.
    listeners: list[Callable[[str, Iterable[str]], None]] = field(default_factory=list)
    _members: dict[str, set[str]] = field(default_factory=dict)
    # The next free serial under each ID prefix (centre + industry + type): IDs are made in
    # O(1), not by scanning the accounts.
    _next_serial: dict[str, int] = field(default_factory=dict)

    # -- start ----------------------------------------------------------------------------------
    def load(self) -> None:
        meta = dict(self.store.load_records(META))
        if "seeded" not in meta:
            self._seed()
            return
        policy = meta["seeded"].get("unknown_devices", "accept")
        self.unknown_devices = "reject" if policy == "reject" else "accept"
        self.units = {k: Unit(**_known(Unit, v)) for k, v in self.store.load_records(UNIT)}
        self.accounts = {
            k: Account(**_known(Account, v)) for k, v in self.store.load_records(ACCOUNT)
        }
        self._index()

    def _seed(self) -> None:
        now = self.clock()
        self.unknown_devices = self.auth.unknown_devices
        for entry in self.auth.devices:
            self.accounts[entry.id] = Account(entry.id, entry.password, created_at=now)
            self._save_account(self.accounts[entry.id])
        self._save_meta()
        self._index()

    def _index(self) -> None:
        self._members = {}
        self._next_serial = {}
        for acc in self.accounts.values():
            if acc.unit_id is not None:
                self._members.setdefault(acc.unit_id, set()).add(acc.device_id)
            self._note_id(acc.device_id)
        for unit in self.units.values():
            self._note_id(unit.vo_id)

    def _note_id(self, gb_id: str) -> None:
        """Keep the next serial under ``gb_id``'s prefix past it."""
        if len(gb_id) != 20 or not gb_id.isdigit():
            return
        prefix, serial = gb_id[:13], int(gb_id[13:])
        if serial >= self._next_serial.get(prefix, 1):
            self._next_serial[prefix] = serial + 1

    def _save_meta(self) -> None:
        self.store.save_record(META, "seeded", {"unknown_devices": self.unknown_devices})

    def _save_account(self, acc: Account) -> None:
        self.store.save_record(ACCOUNT, acc.device_id, asdict(acc))

    def _save_unit(self, unit: Unit) -> None:
        self.store.save_record(UNIT, unit.id, asdict(unit))

    def _changed(self, what: str, device_ids: Iterable[str]) -> None:
        ids = list(device_ids)
        if not ids and what not in (POLICY_CHANGED, UNIT_REMOVED):
            return
        for listener in self.listeners:
            try:
                listener(what, ids)
            except Exception:  # the change is made and stored: the others still hear it
                log.exception("directory.listener_failed", what=what, devices=len(ids))

    # -- what the registrar asks on every REGISTER -----------------------------------------------
    def password(self, device_id: str) -> str | None:
        """The password ``device_id`` must use, or ``None`` when it may not register."""
        acc = self.accounts.get(device_id)
        if acc is not None:
            return acc.password if acc.enabled else None
        return self.auth.password if self.unknown_devices == "accept" else None

    def set_unknown_devices(self, policy: str) -> None:
        if policy not in POLICIES:
            raise DirectoryError("unknown_devices: must be accept or reject", "unknown_devices")
        changed = policy != self.unknown_devices
        self.unknown_devices = "reject" if policy == "reject" else "accept"
        self._save_meta()
        if changed:
            self._changed(POLICY_CHANGED, ())

    # -- units ------------------------------------------------------------------------------------
    def unit_of(self, device_id: str) -> Unit | None:
        acc = self.accounts.get(device_id)
        if acc is None or acc.unit_id is None:
            return None
        return self.units.get(acc.unit_id)

    def members(self, unit_id: str) -> frozenset[str]:
        """The device IDs of a unit's accounts."""
        return frozenset(self._members.get(unit_id, ()))

    def unit(self, unit_id: str) -> Unit:
        """The unit, or DirectoryError 404."""
        unit = self.units.get(unit_id)
        if unit is None:
            raise DirectoryError(f"no unit {unit_id}", "unit_id", status=404)
        return unit

    def find_unit(self, id_or_name: str) -> Unit | None:
        """A unit by its ID, else by its exact name."""
        unit = self.units.get(id_or_name)
        if unit is not None:
            return unit
        name = id_or_name.strip()
        return next((u for u in self.units.values() if u.name == name), None)

    def _unique_name(self, name: str, unit_id: str | None = None) -> None:
        """Unit names are unique (an import names units by name)."""
        for unit in self.units.values():
            if unit.name == name and unit.id != unit_id:
                raise DirectoryError(
                    f"name: unit {unit.id} is already called {name!r}", "name", 409
                )

    def add_unit(self, name: str, **values: Any) -> Unit:
        checked = _check_unit_fields({"name": name, **values})
        self._unique_name(checked["name"])
        unit_id = "u" + secrets.token_hex(4)
        while unit_id in self.units:
            unit_id = "u" + secrets.token_hex(4)
        unit = Unit(unit_id, created_at=self.clock(), **checked)
        unit.vo_id = self._new_id(unit.civil_code, VIRTUAL_ORG)
        self.units[unit_id] = unit
        self._note_id(unit.vo_id)
        self._save_unit(unit)
        return unit

    def update_unit(self, unit_id: str, **values: Any) -> Unit:
        unit = self.unit(unit_id)
        checked = _check_unit_fields(values)
        if "name" in checked:
            self._unique_name(checked["name"], unit_id)
        for key, value in checked.items():
            setattr(unit, key, value)
        self._save_unit(unit)
        self._changed(UNIT_CHANGED, self.members(unit_id))
        return unit

    def remove_unit(self, unit_id: str, *, force: bool = False) -> None:
        """Remove a unit; with devices only when ``force`` (its accounts are unassigned)."""
        self.unit(unit_id)
        members = self.members(unit_id)
        if members and not force:
            raise DirectoryError(
                f"unit {unit_id} still has {len(members)} devices", "unit_id", status=409
            )
        for device_id in members:
            acc = self.accounts[device_id]
            acc.unit_id = None
            self._save_account(acc)
        del self.units[unit_id]
        self._members.pop(unit_id, None)
        self.store.delete_record(UNIT, unit_id)
        self._changed(UNIT_REMOVED, members)

    # -- IDs ---------------------------------------------------------------------------------
    def _prefix(self, civil_code: str, type_code: str) -> str:
        civil = civil_code or self.identity.civil_code or self.identity.id[:8]
        return civil.ljust(8, "0")[:8] + "00" + type_code

    def _new_id(
        self, civil_code: str, type_code: str, taken: Callable[[str], bool] | None = None
    ) -> str:
        """centre code (the civil code, padded to 8 digits) + industry 00 + ``type_code`` +
        network 0 + a 6-digit serial: the next one free under that prefix, O(1) amortised."""
        prefix = self._prefix(civil_code, type_code)
        serial = self._next_serial.get(prefix, 1)
        while True:
            if serial > MAX_SERIAL:
                raise DirectoryError(
                    f"device_id: no free ID left under {prefix}", "device_id", status=409
                )
            candidate = f"{prefix}{serial:07d}"
            if candidate not in self.accounts and not (taken is not None and taken(candidate)):
                return candidate
            serial += 1
            self._next_serial[prefix] = serial

    def new_device_id(
        self,
        unit_id: str | None,
        type_code: str = DEVICE_TYPE_NVR,
        taken: Callable[[str], bool] | None = None,
    ) -> str:
        """A free device ID: the unit's civil code (or the gateway's), industry 00, the type
        (118: NVR) and a serial. It is not reserved: :meth:`add_account` takes it."""
        civil = self.units[unit_id].civil_code if unit_id in self.units else ""
        return self._new_id(civil, type_code, taken)

    # -- accounts ---------------------------------------------------------------------------------
    def account(self, device_id: str) -> Account:
        acc = self.accounts.get(device_id)
        if acc is None:
            raise DirectoryError(f"no account for device {device_id}", "device_id", 404)
        return acc

    def add_account(
        self,
        device_id: str | None = None,
        *,
        password: str | None = None,
        name: str = "",
        unit_id: str | None = None,
        enabled: bool = True,
        taken: Callable[[str], bool] | None = None,
    ) -> Account:
        """A new account; the device ID is made from the unit's civil code when not given, the
        password generated when not given."""
        acc = self._new_account(device_id, password, name, unit_id, enabled, taken)
        self._put(acc)
        self._changed(ACCOUNT_ADDED, [acc.device_id])
        return acc

    def _new_account(
        self,
        device_id: str | None,
        password: str | None,
        name: str,
        unit_id: str | None,
        enabled: bool,
        taken: Callable[[str], bool] | None = None,
    ) -> Account:
        if device_id is not None and device_id != "":
            device_id = check_device_id(device_id)
            if device_id in self.accounts:
                raise DirectoryError(
                    f"device_id: {device_id} already has an account", "device_id", 409
                )
        name = check_name(name)
        if unit_id is not None:
            self.unit(unit_id)
        password = check_password(password) if password is not None else generate_password()
        if not isinstance(enabled, bool):
            raise DirectoryError("enabled: must be true or false", "enabled")
        if not device_id:
            device_id = self.new_device_id(unit_id, taken=taken)
        return Account(
            device_id,
            password,
            name=name,
            unit_id=unit_id,
            enabled=enabled,
            created_at=self.clock(),
        )

    def _put(self, acc: Account) -> None:
        self.accounts[acc.device_id] = acc
        if acc.unit_id is not None:
            self._members.setdefault(acc.unit_id, set()).add(acc.device_id)
        self._note_id(acc.device_id)
        self._save_account(acc)

    def update_account(self, device_id: str, **values: Any) -> Account:
        """Change ``name``, ``unit_id``, ``password`` or ``enabled``. A new password or a
        disabled account revokes the device's registration (``ACCOUNT_REVOKED``)."""
        acc = self.account(device_id)
        checked = self._check_account_fields(values)
        revoked = self._apply(acc, checked)
        self._save_account(acc)
        self._changed(ACCOUNT_REVOKED if revoked else ACCOUNT_CHANGED, [device_id])
        return acc

    def _check_account_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key == "name":
                out[key] = check_name(value)
            elif key == "password":
                out[key] = check_password(value)
            elif key == "unit_id":
                if value is not None:
                    self.unit(value)
                out[key] = value
            elif key == "enabled":
                if not isinstance(value, bool):
                    raise DirectoryError("enabled: must be true or false", "enabled")
                out[key] = value
            else:
                raise DirectoryError(f"{key}: not a field of an account", key)
        return out

    def _apply(self, acc: Account, checked: Mapping[str, Any]) -> bool:
        """Set checked values; True when the change revokes the credentials in use."""
        revoked = ("password" in checked and checked["password"] != acc.password) or (
            checked.get("enabled") is False and acc.enabled
        )
        old_unit = acc.unit_id
        for key, value in checked.items():
            setattr(acc, key, value)
        if acc.unit_id != old_unit:
            if old_unit is not None:
                self._members.get(old_unit, set()).discard(acc.device_id)
            if acc.unit_id is not None:
                self._members.setdefault(acc.unit_id, set()).add(acc.device_id)
        return revoked

    def remove_account(self, device_id: str) -> None:
        acc = self.account(device_id)
        del self.accounts[device_id]
        if acc.unit_id is not None:
            self._members.get(acc.unit_id, set()).discard(device_id)
        self.store.delete_record(ACCOUNT, device_id)
        self._changed(ACCOUNT_REVOKED, [device_id])

    # -- bulk --------------------------------------------------------------------------------
    def import_accounts(
        self,
        rows: Iterable[ImportRow],
        *,
        may_change_password: bool = True,
        taken: Callable[[str], bool] | None = None,
    ) -> ImportReport:
        """Create or update an account per row: each row is checked on its own, a bad one is
        reported (row number, field, message) and the good ones are applied. One store record
        per account; listeners are called once per kind of change with all its IDs. An
        existing account's password is only changed when ``may_change_password`` (else the row
        is refused)."""
        job = _Import(self, may_change_password, taken)
        for row in rows:
            job.take(row)
        return job.finish()

    async def import_accounts_async(
        self,
        rows: Iterable[ImportRow],
        *,
        may_change_password: bool = True,
        taken: Callable[[str], bool] | None = None,
        batch: int = 500,
    ) -> ImportReport:
        """:meth:`import_accounts`, giving the event loop a turn every ``batch`` rows (a city's
        file of 100,000 rows takes seconds; SIP keeps being served meanwhile). Each row is
        checked against the directory as it is when the row's turn comes."""
        job = _Import(self, may_change_password, taken)
        try:
            for n, row in enumerate(rows, start=1):
                job.take(row)
                if n % batch == 0:
                    await asyncio.sleep(0)
        except BaseException:
            # Cancelled (or failed) half way: the rows already applied are stored, so the
            # listeners are still told and the revocations still happen.
            job.finish()
            raise
        return job.finish()

    def _import_unit(self, unit: str | None, by_name: Mapping[str, str]) -> str | None:
        if unit is None:
            return None
        if unit in self.units:
            return unit
        found = by_name.get(unit.strip())
        if found is None:
            raise DirectoryError(f"unit: no unit {unit[:MAX_NAME]!r} (ID or name)", "unit", 404)
        return found


class _Import:
    """One bulk import under way (see :meth:`Directory.import_accounts`)."""

    def __init__(
        self, d: Directory, may_change_password: bool, taken: Callable[[str], bool] | None
    ) -> None:
        self.d = d
        self.may_change_password = may_change_password
        self.taken = taken
        self.report = ImportReport()
        self.by_name = {u.name: u.id for u in d.units.values()}  # not a scan per row
        self.seen: set[str] = set()
        self.revoked: list[str] = []
        self.changed: list[str] = []

    def take(self, row: ImportRow) -> None:
        d = self.d
        try:
            if row.error is not None:
                raise DirectoryError(row.error, row.error_field)
            device_id = (row.device_id or "").strip()
            if device_id in self.seen:
                raise DirectoryError(f"device_id: {device_id} is in the file twice", "device_id")
            unit_id = d._import_unit(row.unit, self.by_name)
            acc = d.accounts.get(device_id) if device_id else None
            if acc is not None:
                values: dict[str, Any] = {}
                if row.name is not None:
                    values["name"] = row.name
                if row.unit is not None:
                    values["unit_id"] = unit_id
                if row.password is not None and row.password != acc.password:
                    if not self.may_change_password:
                        raise DirectoryError(
                            "password: changing a device's password needs admin", "password", 403
                        )
                    values["password"] = row.password
                checked = d._check_account_fields(values)
                (self.revoked if d._apply(acc, checked) else self.changed).append(device_id)
                d._save_account(acc)
                self.report.updated.append(device_id)
            else:
                acc = d._new_account(
                    device_id or None, row.password, row.name or "", unit_id, True, self.taken
                )
                d._put(acc)
                self.report.created.append(acc.device_id)
            self.seen.add(acc.device_id)
        except DirectoryError as exc:
            self.report.errors.append(ImportProblem(row.row, exc.field, exc.message))

    def finish(self) -> ImportReport:
        self.d._changed(ACCOUNT_ADDED, self.report.created)
        self.d._changed(ACCOUNT_CHANGED, self.changed)
        self.d._changed(ACCOUNT_REVOKED, self.revoked)
        return self.report
