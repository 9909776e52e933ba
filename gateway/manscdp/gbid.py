"""The 20-digit GB ID and civil-region codes (GB/T 28181-2022 Appendix E, unified coding rules):
splitting an ID into centre, industry, type, network and serial, and telling catalog items apart
by type code (region, system, business group, virtual organisation, device, channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

ItemKind = Literal["region", "system", "business_group", "virtual_org", "device", "channel"]

SYSTEM: Final = 200  # centre signalling control server (SIP server / platform)
BUSINESS_GROUP: Final = 215
VIRTUAL_ORG: Final = 216
# Front-end main devices: DVR ... NVR (111-118), the 2022 additions (120-125) and HVR (130).
MAIN_DEVICE_TYPES: Final[frozenset[int]] = frozenset((*range(111, 119), *range(120, 126), 130))
# Peripherals: camera, IPC, monitor, alarm in/out, voice in/out, ... credential reader.
CHANNEL_TYPES: Final[frozenset[int]] = frozenset(range(131, 144))

_CIVIL_CODE_LENGTHS: Final = frozenset((2, 4, 6, 8))


def _digits(s: str) -> bool:
    # str.isdigit alone accepts '²' and full-width digits.
    return s.isascii() and s.isdigit()


@dataclass(frozen=True, slots=True)
class GbId:
    """A 20-digit ID: centre (8) + industry (2) + type (3) + network (1) + serial (6)."""

    centre: str
    industry: str
    type_code: int
    network: int
    serial: str

    @property
    def province(self) -> str:
        return self.centre[0:2]

    @property
    def city(self) -> str:
        return self.centre[0:4]

    @property
    def district(self) -> str:
        return self.centre[0:6]

    @property
    def domain(self) -> str:
        """The first 10 digits, the usual SIP domain of a platform."""
        return self.centre + self.industry

    def __str__(self) -> str:
        return f"{self.centre}{self.industry}{self.type_code:03d}{self.network}{self.serial}"


def is_gb_id(s: str | None) -> bool:
    return s is not None and len(s) == 20 and _digits(s)


def is_civil_code(s: str | None) -> bool:
    """A civil-region code: 2, 4, 6 or 8 digits (province, city, district, grass-roots unit)."""
    return s is not None and len(s) in _CIVIL_CODE_LENGTHS and _digits(s)


def parse_gb_id(s: str) -> GbId:
    if not is_gb_id(s):
        raise ValueError(f"GB ID must be exactly 20 ASCII digits, got {s!r}")
    return GbId(
        centre=s[0:8],
        industry=s[8:10],
        type_code=int(s[10:13]),
        network=int(s[13]),
        serial=s[14:20],
    )


def type_code(s: str | None) -> int | None:
    """Positions 11-13 of a valid 20-digit ID, else None."""
    return int(s[10:13]) if s is not None and is_gb_id(s) else None


def item_kind(device_id: str) -> ItemKind:
    """What a catalog item is, from its ID alone. IDs that fit no rule count as channels."""
    if is_civil_code(device_id):
        return "region"
    code = type_code(device_id)
    if code == SYSTEM:
        return "system"
    if code == BUSINESS_GROUP:
        return "business_group"
    if code == VIRTUAL_ORG:
        return "virtual_org"
    if code in MAIN_DEVICE_TYPES:
        return "device"
    return "channel"


def make_gb_id(centre: str, industry: str, type_code: int, network: int, serial: int) -> str:
    """Assemble an ID from its parts; ValueError when a part does not fit its positions."""
    if len(centre) != 8 or not _digits(centre):
        raise ValueError(f"centre code must be 8 digits, got {centre!r}")
    if len(industry) != 2 or not _digits(industry):
        raise ValueError(f"industry code must be 2 digits, got {industry!r}")
    if not 0 <= type_code <= 999:
        raise ValueError(f"type code {type_code} out of range 0..999")
    if not 0 <= network <= 9:
        raise ValueError(f"network flag {network} out of range 0..9")
    if not 0 <= serial <= 999_999:
        raise ValueError(f"serial {serial} out of range 0..999999")
    return f"{centre}{industry}{type_code:03d}{network}{serial:06d}"
