"""What a simulated device holds, made on demand: channel IDs, catalog items, record files.

Nothing here keeps state. A device with 100 channels stores two integers (count and ID base);
its :class:`~gateway.manscdp.messages.CatalogItem` objects are built when a Catalog query arrives
and dropped once sent, so one process can play thousands of devices.

IDs (GB/T 28181-2022 Appendix E; reference §1.2, §1.4): a device's channels share its first 10
digits (centre + industry), have type 131 (camera), and take their 7-digit network+serial part
from ``base + n``; ``base`` defaults to ``(device serial mod 10,000) × 1,000``, so devices whose
serials differ (and are below 10,000 apart) never share a channel ID and each owns one block of
1,000 channel serials. The optional custom tree is one business group (215) and two virtual
organisations (216) with serials ``base + 1`` and ``base + 2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from gateway.manscdp.messages import CatalogInfo, CatalogItem, RecordItem

CAMERA: int = 131
BUSINESS_GROUP: int = 215
VIRTUAL_ORG: int = 216
BLOCK: int = 1000  # channel serials one device owns by default
SERIAL_SPACE: int = 10**7  # positions 14-20: network flag + 6-digit serial
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def default_channel_base(device_id: str) -> int:
    """Where a device's channel serials start unless it says otherwise."""
    return (int(device_id[13:20]) % 10_000) * BLOCK


def sub_id(device_id: str, type_code: int, serial: int) -> str:
    """An ID in the device's centre and industry: ``device_id[:10] + type + 7-digit serial``."""
    if not 0 <= serial < SERIAL_SPACE:
        raise ValueError(f"serial {serial} does not fit 7 digits")
    return f"{device_id[:10]}{type_code:03d}{serial:07d}"


def channel_id(device_id: str, base: int, n: int) -> str:
    """The ID of channel ``n`` (1-based)."""
    return sub_id(device_id, CAMERA, base + n)


def channel_number(device_id: str, base: int, count: int, cid: str) -> int | None:
    """``n`` when ``cid`` is channel ``n`` (1..count) of this device, else None."""
    if (
        len(cid) != 20
        or not (cid.isascii() and cid.isdigit())
        or cid[:10] != device_id[:10]
        or cid[10:13] != f"{CAMERA:03d}"
    ):
        return None
    n = int(cid[13:]) - base
    return n if 1 <= n <= count else None


def group_ids(device_id: str, base: int) -> tuple[str, str, str]:
    """(business group, virtual organisation 1, virtual organisation 2 nested in 1)."""
    return (
        sub_id(device_id, BUSINESS_GROUP, base + 1),
        sub_id(device_id, VIRTUAL_ORG, base + 1),
        sub_id(device_id, VIRTUAL_ORG, base + 2),
    )


def group_items(device_id: str, base: int, civil_code: str, gb2022: bool) -> list[CatalogItem]:
    """The custom tree (reference §1.4): the business group's ParentID is the device (the
    system that defined it); organisation 1 sits directly under the group (no ParentID),
    organisation 2 under organisation 1. ``BusinessGroupID`` is top level in 2022, inside
    ``Info`` in 2016."""
    bg, vo1, vo2 = group_ids(device_id, base)

    def org(oid: str, name: str, parent: str | None) -> CatalogItem:
        if gb2022:
            return CatalogItem(device_id=oid, name=name, parent_id=parent, business_group_id=bg)
        info = CatalogInfo(business_group_id=bg)
        return CatalogItem(device_id=oid, name=name, parent_id=parent, info=info)

    return [
        CatalogItem(
            device_id=bg, name="视频监控业务分组", civil_code=civil_code, parent_id=device_id
        ),
        org(vo1, "一号楼", None),
        org(vo2, "一号楼一层", vo1),
    ]


def channel_item(
    device_id: str,
    cid: str,
    n: int,
    *,
    parent_id: str,
    civil_code: str,
    manufacturer: str,
    model: str,
    gb2022: bool,
    status: str = "ON",
) -> CatalogItem:
    """A camera channel with the fields real equipment fills in (reference §3.2): 2016 items
    carry Owner, SafetyWay and the 2016 ``Info`` children; 2022 items the 2022 ones."""
    if gb2022:
        info = CatalogInfo(
            ptz_type=1 if n % 3 == 1 else 3,
            supply_light_type=2,
            direction_type=1 + n % 8,
            resolution="5/6",
            download_speed="1/2/4",
            photoelectric_imaging_type="1",
            stream_number_list="0/1",
            horizontal_field_angle=90.0,
            vertical_field_angle=50.0,
            max_view_distance=60.0,
            grassroots_code=civil_code,
            point_type=3,
            mac=f"44-19-b6-{(n >> 16) & 0xFF:02x}-{(n >> 8) & 0xFF:02x}-{n & 0xFF:02x}",
            encode_type="2",
            install_time="2021-06-01T09:00:00",
            management_unit="城市视频联网管理中心",
            contact_info="010-12345678",
            record_save_days=30,
        )
    else:
        info = CatalogInfo(
            ptz_type=1 if n % 3 == 1 else 3,
            position_type=6,
            room_type=1 + n % 2,
            use_type=1,
            supply_light_type=2,
            direction_type=1 + n % 8,
            resolution="5/6",
            download_speed="1/2/4/8",
        )
    return CatalogItem(
        device_id=cid,
        name=f"通道{n}",
        manufacturer=manufacturer,
        model=model,
        owner=None if gb2022 else "Owner",
        civil_code=civil_code,
        address=f"北京路{n}号",
        parental=0,
        parent_id=parent_id,
        safety_way=None if gb2022 else 0,
        register_way=1,
        secrecy=0,
        ip_address=f"192.168.{(n // 250) % 256}.{n % 250 + 2}",
        port=8000,
        status=status,
        longitude=round(116.3974 + n * 0.0001, 6),
        latitude=round(39.9087 + n * 0.0001, 6),
        info=info,
    )


# -- record files (RecordInfo, reference §3.6) --------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    """A MANSCDP time (``yyyy-MM-ddTHH:mm:ss``; a space or a zone suffix tolerated)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip()).replace(tzinfo=None)
    except ValueError:
        return None


def generate_records(
    channel: str, name: str, start: datetime, end: datetime, count: int, kind: str
) -> Iterator[RecordItem]:
    """``count`` back-to-back files splitting ``start``..``end`` evenly, of type ``kind``."""
    if count <= 0 or end <= start:
        return
    step = (end - start) / count
    for i in range(count):
        s = start + step * i
        e = max(s + timedelta(seconds=1), start + step * (i + 1) - timedelta(seconds=1))
        seconds = int((e - s).total_seconds())
        yield RecordItem(
            device_id=channel,
            name=name,
            file_path=f"/record/{channel}/{s:%Y%m%d%H%M%S}.ps",
            address="北京路",
            start_time=s.strftime(TIME_FORMAT),
            end_time=e.strftime(TIME_FORMAT),
            secrecy=0,
            type=kind,
            recorder_id=channel,
            file_size=seconds * 512 * 1024,
        )


def select_records(
    records: Iterable[RecordItem], start: datetime | None, end: datetime | None, kind: str | None
) -> Iterator[RecordItem]:
    """The configured files that overlap ``start``..``end`` and match ``kind`` (``all``/None:
    every type)."""
    want = None if kind is None or kind.lower() == "all" else kind.lower()
    for rec in records:
        if want is not None and (rec.type or "").lower() != want:
            continue
        rs, re_ = parse_time(rec.start_time), parse_time(rec.end_time)
        if start is not None and re_ is not None and re_ < start:
            continue
        if end is not None and rs is not None and rs > end:
            continue
        yield rec
