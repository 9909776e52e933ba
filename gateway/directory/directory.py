"""Social units and the device accounts that may register, changeable while the gateway runs.

A *unit* (社会单位: an enterprise, school, bank, hospital...) is what operators think in: it has
a name, a kind, an address, a contact and a civil code, and owns device accounts. Each unit
has a virtual-organisation ID (type 216, GB/T 28181-2022 Annex D) under which the uppers see
its cameras. A *device account* is a device ID allowed to register, with its SIP digest
password (kept in clear: digest authentication needs it, and the unit's credential sheet shows
it), its unit, and whether it is enabled.

The policy for devices with no account (``unknown_devices``: accept them with the default
password, or reject them) is kept here too. At the first start (no ``directory`` marker in the
store) the TOML file's ``[auth]`` section seeds the accounts and the policy; after that the
store is the truth and the API changes it.

Everything is kept in memory (read on every REGISTER) and written through to the store as
records (kinds ``unit``, ``account``, ``directory``).
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.settings import AuthSection, Identity
from gateway.store import Store

UNIT = "unit"
ACCOUNT = "account"
META = "directory"
UnitKind = Literal["enterprise", "school", "bank", "hospital", "government", "other"]
UNIT_KINDS: tuple[str, ...] = ("enterprise", "school", "bank", "hospital", "government", "other")
Policy = Literal["accept", "reject"]
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 16


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
    """A change refused; ``field`` names what was wrong (the API answers 4xx with it)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


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
    # Called with the device IDs whose account changed (disabled, removed, moved to another
    # unit) so the registrar and the uplink can react.
    listeners: list[Callable[[str, Iterable[str]], None]] = field(default_factory=list)
    _members: dict[str, set[str]] = field(default_factory=dict)

    # -- start ----------------------------------------------------------------------------------
    def load(self) -> None:
        meta = dict(self.store.load_records(META))
        if "seeded" not in meta:
            self._seed()
            return
        self.unknown_devices = meta["seeded"].get("unknown_devices", "accept")
        self.units = {k: Unit(**v) for k, v in self.store.load_records(UNIT)}
        self.accounts = {k: Account(**v) for k, v in self.store.load_records(ACCOUNT)}
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
        for acc in self.accounts.values():
            if acc.unit_id is not None:
                self._members.setdefault(acc.unit_id, set()).add(acc.device_id)

    def _save_meta(self) -> None:
        self.store.save_record(META, "seeded", {"unknown_devices": self.unknown_devices})

    def _save_account(self, acc: Account) -> None:
        self.store.save_record(ACCOUNT, acc.device_id, asdict(acc))

    def _save_unit(self, unit: Unit) -> None:
        self.store.save_record(UNIT, unit.id, asdict(unit))

    def _changed(self, what: str, device_ids: Iterable[str]) -> None:
        ids = list(device_ids)
        for listener in self.listeners:
            listener(what, ids)

    # -- what the registrar asks on every REGISTER -----------------------------------------------
    def password(self, device_id: str) -> str | None:
        """The password ``device_id`` must use, or ``None`` when it may not register."""
        acc = self.accounts.get(device_id)
        if acc is not None:
            return acc.password if acc.enabled else None
        return self.auth.password if self.unknown_devices == "accept" else None

    def set_unknown_devices(self, policy: Policy) -> None:
        self.unknown_devices = policy
        self._save_meta()

    # -- units ------------------------------------------------------------------------------------
    def unit_of(self, device_id: str) -> Unit | None:
        acc = self.accounts.get(device_id)
        if acc is None or acc.unit_id is None:
            return None
        return self.units.get(acc.unit_id)

    def members(self, unit_id: str) -> frozenset[str]:
        """The device IDs of a unit's accounts."""
        return frozenset(self._members.get(unit_id, ()))

    def add_unit(self, name: str, **fields: Any) -> Unit:
        unit_id = "u" + secrets.token_hex(4)
        while unit_id in self.units:
            unit_id = "u" + secrets.token_hex(4)
        unit = Unit(unit_id, name, created_at=self.clock(), **fields)
        unit.vo_id = self._new_vo_id(unit.civil_code)
        self.units[unit_id] = unit
        self._save_unit(unit)
        return unit

    def _new_vo_id(self, civil_code: str) -> str:
        """civil code (8 digits) + industry 00 + type 216 + a serial of 7 digits."""
        prefix = (civil_code or self.identity.civil_code or self.identity.id[:8]).ljust(8, "0")
        prefix = prefix[:8] + "00216"
        used = {u.vo_id for u in self.units.values()}
        serial = len(self.units) + 1
        while f"{prefix}{serial:07d}" in used:
            serial += 1
        return f"{prefix}{serial:07d}"

    def update_unit(self, unit_id: str, **fields: Any) -> Unit:
        unit = self._unit(unit_id)
        for key, value in fields.items():
            setattr(unit, key, value)
        self._save_unit(unit)
        self._changed("unit", self.members(unit_id))
        return unit

    def remove_unit(self, unit_id: str, *, force: bool = False) -> None:
        self._unit(unit_id)
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
        self._changed("unit", members)

    def _unit(self, unit_id: str) -> Unit:
        unit = self.units.get(unit_id)
        if unit is None:
            raise DirectoryError(f"no unit {unit_id}", "unit_id", status=404)
        return unit

    # -- accounts ---------------------------------------------------------------------------------
    def add_account(
        self,
        device_id: str,
        *,
        password: str | None = None,
        name: str = "",
        unit_id: str | None = None,
        enabled: bool = True,
    ) -> Account:
        if device_id in self.accounts:
            raise DirectoryError(f"device {device_id} already has an account", "device_id", 409)
        if unit_id is not None:
            self._unit(unit_id)
        acc = Account(
            device_id,
            password or generate_password(),
            name=name,
            unit_id=unit_id,
            enabled=enabled,
            created_at=self.clock(),
        )
        self.accounts[device_id] = acc
        if unit_id is not None:
            self._members.setdefault(unit_id, set()).add(device_id)
        self._save_account(acc)
        self._changed("account", [device_id])
        return acc

    def update_account(self, device_id: str, **fields: Any) -> Account:
        acc = self.accounts.get(device_id)
        if acc is None:
            raise DirectoryError(f"no account for device {device_id}", "device_id", 404)
        if "unit_id" in fields and fields["unit_id"] is not None:
            self._unit(fields["unit_id"])
        old_unit = acc.unit_id
        for key, value in fields.items():
            setattr(acc, key, value)
        if acc.unit_id != old_unit:
            if old_unit is not None:
                self._members.get(old_unit, set()).discard(device_id)
            if acc.unit_id is not None:
                self._members.setdefault(acc.unit_id, set()).add(device_id)
        self._save_account(acc)
        self._changed("account", [device_id])
        return acc

    def remove_account(self, device_id: str) -> None:
        acc = self.accounts.pop(device_id, None)
        if acc is None:
            raise DirectoryError(f"no account for device {device_id}", "device_id", 404)
        if acc.unit_id is not None:
            self._members.get(acc.unit_id, set()).discard(device_id)
        self.store.delete_record(ACCOUNT, device_id)
        self._changed("account", [device_id])

    def new_device_id(self, unit_id: str | None, type_code: str = "118") -> str:
        """A free device ID: the unit's civil code (or the gateway's), industry 00, the type
        (118: NVR) and a serial."""
        civil = self.units[unit_id].civil_code if unit_id in self.units else ""
        prefix = (civil or self.identity.civil_code or self.identity.id[:8]).ljust(8, "0")[:8]
        prefix += "00" + type_code
        serial = 1
        while f"{prefix}{serial:07d}" in self.accounts:
            serial += 1
        return f"{prefix}{serial:07d}"
