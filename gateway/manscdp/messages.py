"""Typed MANSCDP messages: one class per (root, CmdType) of the command inventory.

GB/T 28181-2016 and -2022 Annex A (reference §3–§5). Each class lists its elements in the
standard's order; :mod:`gateway.manscdp.schema` reads and writes them. ``decode(bytes)`` gives the
typed message with the charset the peer really used; ``encode(message, charset)`` gives bytes
with a double-quoted GB prolog.

Field names follow the standard's element names in snake case (``SumNum`` → ``sum_num``,
``IPAddress`` → ``ip_address``). Absent elements are ``None`` (lists: empty tuples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import structlog
from lxml import etree

from gateway.manscdp import xmlio
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.schema import (
    Block,
    Node,
    block,
    compile_node,
    integer,
    items,
    node,
    number,
    read_node,
    text,
    texts,
    write_node,
)

log = structlog.get_logger("gateway.manscdp")

M = TypeVar("M", bound="Message")

REGISTRY: dict[tuple[str, str], type[Message]] = {}


def register(root: str, cmd: str) -> Any:
    def deco(cls: type[M]) -> type[M]:
        cls.ROOT = root
        cls.CMD = cmd
        REGISTRY[(root.lower(), cmd.lower())] = cls
        return cls

    return deco


@compile_node
@dataclass(slots=True, kw_only=True)
class Message(Node):
    """The envelope every message shares: ``CmdType`` (from the class), ``SN``, ``DeviceID``."""

    ROOT: ClassVar[str] = ""
    CMD: ClassVar[str] = ""

    sn: int = integer("SN", required=True)
    device_id: str = text("DeviceID", required=True)

    @property
    def key(self) -> tuple[str, str, int]:
        """(DeviceID, CmdType, SN): how a Response is matched to its request (reference §3.1)."""
        return (self.device_id, self.CMD, self.sn)


# ---------------------------------------------------------------------------------------------
# Items and blocks shared by several messages


@compile_node
@dataclass(slots=True, kw_only=True)
class CatalogInfo(Node):
    """The catalog item's ``Info`` extension (2016 and 2022 fields)."""

    ptz_type: int | None = integer("PTZType")
    position_type: int | None = integer("PositionType")  # 2016
    room_type: int | None = integer("RoomType")
    use_type: int | None = integer("UseType")  # 2016
    supply_light_type: int | None = integer("SupplyLightType")
    direction_type: int | None = integer("DirectionType")
    resolution: str | None = text("Resolution")
    business_group_id: str | None = text("BusinessGroupID")  # 2016 place
    download_speed: str | None = text("DownloadSpeed")
    svc_space_support_mode: int | None = integer("SVCSpaceSupportMode")
    svc_time_support_mode: int | None = integer("SVCTimeSupportMode")
    photoelectric_imaging_type: str | None = text("PhotoelectricImagingType")  # 2022 from here
    capture_position_type: str | None = text("CapturePositionType")
    stream_number_list: str | None = text("StreamNumberList")
    ssvc_ratio_support_list: str | None = text("SSVCRatioSupportList")
    mobile_device_type: int | None = integer("MobileDeviceType")
    horizontal_field_angle: float | None = number("HorizontalFieldAngle")
    vertical_field_angle: float | None = number("VerticalFieldAngle")
    max_view_distance: float | None = number("MaxViewDistance")
    grassroots_code: str | None = text("GrassrootsCode")
    point_type: int | None = integer("PointType")
    point_common_name: str | None = text("PointCommonName")
    mac: str | None = text("MAC")
    function_type: str | None = text("FunctionType")
    encode_type: str | None = text("EncodeType")
    install_time: str | None = text("InstallTime")
    management_unit: str | None = text("ManagementUnit")
    contact_info: str | None = text("ContactInfo")
    record_save_days: int | None = integer("RecordSaveDays")
    industrial_classification: str | None = text("IndustrialClassification")


@compile_node
@dataclass(slots=True, kw_only=True)
class CatalogItem(Node):
    """One catalog item: a device, channel, civil region, system, business group or virtual
    organisation (reference §1.4, §3.2). ``event`` is set in catalog NOTIFYs (§5.2)."""

    device_id: str = text("DeviceID", required=True)
    event: str | None = text("Event", upper=True)
    name: str | None = text("Name")
    manufacturer: str | None = text("Manufacturer")
    model: str | None = text("Model")
    owner: str | None = text("Owner")  # 2016
    civil_code: str | None = text("CivilCode")
    block: str | None = text("Block")
    address: str | None = text("Address")
    parental: int | None = integer("Parental")
    parent_id: str | None = text("ParentID")
    safety_way: int | None = integer("SafetyWay")  # 2016
    register_way: int | None = integer("RegisterWay")
    security_level_code: str | None = text("SecurityLevelCode")  # 2022
    cert_num: str | None = text("CertNum")  # 2016
    certifiable: int | None = integer("Certifiable")  # 2016
    err_code: int | None = integer("ErrCode")  # 2016
    end_time: str | None = text("EndTime")  # 2016
    secrecy: int | None = integer("Secrecy")
    ip_address: str | None = text("IPAddress")
    port: int | None = integer("Port")
    password: str | None = text("Password")
    status: str | None = text("Status", upper=True)
    longitude: float | None = number("Longitude")
    latitude: float | None = number("Latitude")
    business_group_id: str | None = text("BusinessGroupID")  # 2022 place
    info: CatalogInfo | None = node("Info", CatalogInfo)

    @property
    def group_id(self) -> str | None:
        """The business group, from its 2022 place or its 2016 place inside ``Info``."""
        if self.business_group_id:
            return self.business_group_id
        return self.info.business_group_id if self.info is not None else None

    @property
    def parent_ids(self) -> tuple[str, ...]:
        """``ParentID`` split on ``/`` (several parents are allowed, reference §1.4)."""
        if not self.parent_id:
            return ()
        return tuple(p.strip() for p in self.parent_id.split("/") if p.strip())


@compile_node
@dataclass(slots=True, kw_only=True)
class RecordItem(Node):
    device_id: str | None = text("DeviceID")
    name: str | None = text("Name")
    file_path: str | None = text("FilePath")
    address: str | None = text("Address")
    start_time: str | None = text("StartTime")
    end_time: str | None = text("EndTime")
    secrecy: int | None = integer("Secrecy")
    type: str | None = text("Type")
    recorder_id: str | None = text("RecorderID")
    file_size: int | None = integer("FileSize")
    record_location: str | None = text("RecordLocation")  # 2022
    stream_number: int | None = integer("StreamNumber")  # 2022


@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmStatusItem(Node):
    device_id: str | None = text("DeviceID")
    duty_status: str | None = text("DutyStatus", upper=True)


@compile_node
@dataclass(slots=True, kw_only=True)
class Preset(Node):
    preset_id: int | None = integer("PresetID")
    preset_name: str | None = text("PresetName")


@compile_node
@dataclass(slots=True, kw_only=True)
class BasicParam(Node):
    name: str | None = text("Name")
    expiration: int | None = integer("Expiration")
    heart_beat_interval: int | None = integer("HeartBeatInterval")
    heart_beat_count: int | None = integer("HeartBeatCount")
    position_capability: int | None = integer("PositionCapability")  # 2016
    longitude: float | None = number("Longitude")  # 2016
    latitude: float | None = number("Latitude")  # 2016


@compile_node
@dataclass(slots=True, kw_only=True)
class VideoParamOpt(Node):
    download_speed: str | None = text("DownloadSpeed")
    resolution: str | None = text("Resolution")


@compile_node
@dataclass(slots=True, kw_only=True)
class HomePosition(Node):
    enabled: int | None = integer("Enabled")
    reset_time: int | None = integer("ResetTime")
    preset_index: int | None = integer("PresetIndex")


@compile_node
@dataclass(slots=True, kw_only=True)
class ZoomBox(Node):
    """DragZoomIn/DragZoomOut and TargetArea: window size, box centre and box size, pixels."""

    length: int | None = integer("Length")
    width: int | None = integer("Width")
    mid_point_x: int | None = integer("MidPointX")
    mid_point_y: int | None = integer("MidPointY")
    length_x: int | None = integer("LengthX")
    length_y: int | None = integer("LengthY")


@compile_node
@dataclass(slots=True, kw_only=True)
class PtzCmdParams(Node):
    preset_name: str | None = text("PresetName")
    cruise_track_name: str | None = text("CruiseTrackName")


@compile_node
@dataclass(slots=True, kw_only=True)
class PtzPrecise(Node):
    pan: float | None = number("Pan")
    tilt: float | None = number("Tilt")
    zoom: float | None = number("Zoom")


@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmSelector(Node):
    """``Info`` of AlarmCmd (2022): which alarms a reset applies to."""

    alarm_method: str | None = text("AlarmMethod")
    alarm_type: str | None = text("AlarmType")


@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceUpgrade(Node):
    firmware: str | None = text("Firmware")
    file_url: str | None = text("FileURL")
    manufacturer: str | None = text("Manufacturer")
    session_id: str | None = text("SessionID")


@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmTypeParam(Node):
    event_type: int | None = integer("EventType")


@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmInfo(Node):
    alarm_type: int | None = integer("AlarmType")
    alarm_type_param: AlarmTypeParam | None = node("AlarmTypeParam", AlarmTypeParam)


@compile_node
@dataclass(slots=True, kw_only=True)
class KeepaliveInfo(Node):
    """Devices in fault, listed in a keepalive (``<Info><DeviceID>…`` ×n)."""

    device_ids: tuple[str, ...] = texts("DeviceID")


@compile_node
@dataclass(slots=True, kw_only=True)
class PositionItem(Node):
    """One position of the 2022 MobilePosition list form."""

    device_id: str | None = text("DeviceID")
    capture_time: str | None = text("CaptureTime")
    longitude: float | None = number("Longitude")
    latitude: float | None = number("Latitude")
    speed: float | None = number("Speed")
    direction: float | None = number("Direction")
    altitude: float | None = number("Altitude")
    height: float | None = number("Height")


@compile_node
@dataclass(slots=True, kw_only=True)
class CruiseTrack(Node):
    number: int | None = integer("Number")
    name: str | None = text("Name")


@compile_node
@dataclass(slots=True, kw_only=True)
class CruisePoint(Node):
    preset_index: int | None = integer("PresetIndex")
    stay_time: int | None = integer("StayTime")
    speed: int | None = integer("Speed")


@compile_node
@dataclass(slots=True, kw_only=True)
class SDCard(Node):
    id: int | None = integer("ID")
    hdd_name: str | None = text("HddName")
    status: str | None = text("Status")
    format_progress: int | None = integer("FormatProgress")
    capacity: float | None = number("Capacity")
    free_space: float | None = number("FreeSpace")


@compile_node
@dataclass(slots=True, kw_only=True)
class SnapShotList(Node):
    file_ids: tuple[str, ...] = texts("SnapShotFileID")


# ---------------------------------------------------------------------------------------------
# Keepalive and Catalog


@register("Notify", "Keepalive")
@compile_node
@dataclass(slots=True, kw_only=True)
class Keepalive(Message):
    status: str | None = text("Status", upper=True)
    info: KeepaliveInfo | None = node("Info", KeepaliveInfo)
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Query", "Catalog")
@compile_node
@dataclass(slots=True, kw_only=True)
class CatalogQuery(Message):
    start_time: str | None = text("StartTime")
    end_time: str | None = text("EndTime")


@register("Response", "Catalog")
@compile_node
@dataclass(slots=True, kw_only=True)
class CatalogResponse(Message):
    """A (part of a) catalog answer; also the optional body of a SUBSCRIBE's 200 (``result``)."""

    result: str | None = text("Result", upper=True)
    sum_num: int | None = integer("SumNum")
    items: tuple[CatalogItem, ...] = items("DeviceList", CatalogItem)
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Notify", "Catalog")
@compile_node
@dataclass(slots=True, kw_only=True)
class CatalogNotify(Message):
    """Catalog change notification (reference §5.2): items carry ``event``."""

    sum_num: int | None = integer("SumNum")
    items: tuple[CatalogItem, ...] = items("DeviceList", CatalogItem)


# ---------------------------------------------------------------------------------------------
# Queries and their responses


@register("Query", "DeviceInfo")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceInfoQuery(Message):
    pass


@register("Response", "DeviceInfo")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceInfoResponse(Message):
    device_name: str | None = text("DeviceName")
    result: str | None = text("Result", upper=True)
    manufacturer: str | None = text("Manufacturer")
    model: str | None = text("Model")
    firmware: str | None = text("Firmware", "FirmWare")
    channel: int | None = integer("Channel")
    reason: str | None = text("Reason")
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Query", "DeviceStatus")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceStatusQuery(Message):
    pass


@register("Response", "DeviceStatus")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceStatusResponse(Message):
    result: str | None = text("Result", upper=True)
    online: str | None = text("Online", upper=True)
    status: str | None = text("Status", upper=True)
    reason: str | None = text("Reason")
    encode: str | None = text("Encode", upper=True)
    record: str | None = text("Record", upper=True)
    device_time: str | None = text("DeviceTime")
    alarm_status: tuple[AlarmStatusItem, ...] = items(
        "Alarmstatus", AlarmStatusItem, "Item", "AlarmStatus"
    )
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Query", "RecordInfo")
@compile_node
@dataclass(slots=True, kw_only=True)
class RecordInfoQuery(Message):
    start_time: str | None = text("StartTime")
    end_time: str | None = text("EndTime")
    file_path: str | None = text("FilePath")
    address: str | None = text("Address")
    secrecy: int | None = integer("Secrecy")
    type: str | None = text("Type")
    recorder_id: str | None = text("RecorderID")
    indistinct_query: int | None = integer("IndistinctQuery")
    stream_number: int | None = integer("StreamNumber")  # 2022
    alarm_method: str | None = text("AlarmMethod")  # 2022
    alarm_type: str | None = text("AlarmType")  # 2022


@register("Response", "RecordInfo")
@compile_node
@dataclass(slots=True, kw_only=True)
class RecordInfoResponse(Message):
    name: str | None = text("Name")
    sum_num: int | None = integer("SumNum")
    items: tuple[RecordItem, ...] = items("RecordList", RecordItem)
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Query", "ConfigDownload")
@compile_node
@dataclass(slots=True, kw_only=True)
class ConfigDownloadQuery(Message):
    config_type: str | None = text("ConfigType")


@register("Response", "ConfigDownload")
@compile_node
@dataclass(slots=True, kw_only=True)
class ConfigDownloadResponse(Message):
    """One Response per requested ConfigType is allowed, all with the request's SN."""

    result: str | None = text("Result", upper=True)
    basic_param: BasicParam | None = node("BasicParam", BasicParam)
    video_param_opt: VideoParamOpt | None = node("VideoParamOpt", VideoParamOpt)
    svac_encode_config: Block | None = block("SVACEncodeConfig")
    svac_decode_config: Block | None = block("SVACDecodeConfig")
    video_param_attribute: Block | None = block("VideoParamAttribute")  # 2022 from here
    video_record_plan: Block | None = block("VideoRecordPlan")
    video_alarm_record: Block | None = block("VideoAlarmRecord")
    picture_mask: Block | None = block("PictureMask")
    frame_mirror: Block | None = block("FrameMirror")
    alarm_report: Block | None = block("AlarmReport")
    osd_config: Block | None = block("OSDConfig")
    snap_shot: Block | None = block("SnapShot")
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Query", "PresetQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class PresetQuery(Message):
    pass


@register("Response", "PresetQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class PresetQueryResponse(Message):
    sum_num: int | None = integer("SumNum")
    items: tuple[Preset, ...] = items("PresetList", Preset, omit_empty=False)


@register("Query", "HomePositionQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class HomePositionQuery(Message):
    pass


@register("Response", "HomePositionQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class HomePositionResponse(Message):
    result: str | None = text("Result", upper=True)
    home_position: HomePosition | None = node("HomePosition", HomePosition)


@register("Query", "CruiseTrackListQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class CruiseTrackListQuery(Message):
    pass


@register("Response", "CruiseTrackListQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class CruiseTrackListResponse(Message):
    result: str | None = text("Result", upper=True)
    sum_num: int | None = integer("SumNum")
    items: tuple[CruiseTrack, ...] = items(
        "CruiseTrackList", CruiseTrack, "CruiseTrack", omit_empty=False
    )


@register("Query", "CruiseTrackQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class CruiseTrackQuery(Message):
    number: int | None = integer("Number")


@register("Response", "CruiseTrackQuery")
@compile_node
@dataclass(slots=True, kw_only=True)
class CruiseTrackResponse(Message):
    result: str | None = text("Result", upper=True)
    number: int | None = integer("Number")
    name: str | None = text("Name")
    sum_num: int | None = integer("SumNum")
    items: tuple[CruisePoint, ...] = items(
        "CruisePointList", CruisePoint, "CruisePoint", omit_empty=False
    )


@register("Query", "PTZPosition")
@compile_node
@dataclass(slots=True, kw_only=True)
class PtzPositionQuery(Message):
    pass


@register("Response", "PTZPosition")
@compile_node
@dataclass(slots=True, kw_only=True)
class PtzPositionResponse(Message):
    result: str | None = text("Result", upper=True)
    pan: float | None = number("Pan")
    tilt: float | None = number("Tilt")
    zoom: float | None = number("Zoom")
    horizontal_field_angle: float | None = number("HorizontalFieldAngle")
    vertical_field_angle: float | None = number("VerticalFieldAngle")
    max_view_distance: float | None = number("MaxViewDistance")


@register("Notify", "PTZPosition")
@compile_node
@dataclass(slots=True, kw_only=True)
class PtzPositionNotify(Message):
    pan: float | None = number("Pan")
    tilt: float | None = number("Tilt")
    zoom: float | None = number("Zoom")
    horizontal_field_angle: float | None = number("HorizontalFieldAngle")
    vertical_field_angle: float | None = number("VerticalFieldAngle")
    max_view_distance: float | None = number("MaxViewDistance")


@register("Query", "SDCardStatus")
@compile_node
@dataclass(slots=True, kw_only=True)
class SDCardStatusQuery(Message):
    pass


@register("Response", "SDCardStatus")
@compile_node
@dataclass(slots=True, kw_only=True)
class SDCardStatusResponse(Message):
    result: str | None = text("Result", upper=True)
    sum_num: int | None = integer("SumNum")
    items: tuple[SDCard, ...] = items("SDCardStatusInfo", SDCard, omit_empty=False)


# ---------------------------------------------------------------------------------------------
# Mobile position, alarms, media status, broadcast, 2022 notifications


@register("Query", "MobilePosition")
@compile_node
@dataclass(slots=True, kw_only=True)
class MobilePositionQuery(Message):
    """A one-shot query (MESSAGE) or a subscription body (SUBSCRIBE); ``interval`` in s."""

    interval: int | None = integer("Interval")


@register("Notify", "MobilePosition")
@compile_node
@dataclass(slots=True, kw_only=True)
class MobilePositionNotify(Message):
    """Both forms: 2016 flat (``Time``, ``Longitude``...) and 2022 list (``DeviceList``)."""

    time: str | None = text("Time")
    longitude: float | None = number("Longitude")
    latitude: float | None = number("Latitude")
    speed: float | None = number("Speed")
    direction: float | None = number("Direction")
    altitude: float | None = number("Altitude")
    sum_num: int | None = integer("SumNum")
    items: tuple[PositionItem, ...] = items("DeviceList", PositionItem)

    def positions(self) -> list[PositionItem]:
        """Every position reported, whichever form the device used."""
        if self.items:
            return list(self.items)
        if self.longitude is None or self.latitude is None:
            return []
        return [
            PositionItem(
                device_id=self.device_id,
                capture_time=self.time,
                longitude=self.longitude,
                latitude=self.latitude,
                speed=self.speed,
                direction=self.direction,
                altitude=self.altitude,
            )
        ]


@register("Notify", "Alarm")
@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmNotify(Message):
    alarm_priority: int | None = integer("AlarmPriority")
    alarm_method: int | None = integer("AlarmMethod")
    alarm_time: str | None = text("AlarmTime")
    alarm_description: str | None = text("AlarmDescription")
    longitude: float | None = number("Longitude")
    latitude: float | None = number("Latitude")
    info: AlarmInfo | None = node("Info", AlarmInfo)
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Response", "Alarm")
@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmResponse(Message):
    result: str | None = text("Result", upper=True)


@register("Query", "Alarm")
@compile_node
@dataclass(slots=True, kw_only=True)
class AlarmQuery(Message):
    """An alarm subscription body (A.2.4.6) or alarm query; every filter optional."""

    start_alarm_priority: int | None = integer("StartAlarmPriority")
    end_alarm_priority: int | None = integer("EndAlarmPriority")
    alarm_method: str | None = text("AlarmMethod")
    alarm_type: str | None = text("AlarmType")
    start_alarm_time: str | None = text("StartAlarmTime")
    end_alarm_time: str | None = text("EndAlarmTime")


@register("Notify", "MediaStatus")
@compile_node
@dataclass(slots=True, kw_only=True)
class MediaStatus(Message):
    """In-dialog notification; ``notify_type`` 121 = end of a playback/download file."""

    notify_type: int | None = integer("NotifyType")


@register("Notify", "Broadcast")
@compile_node
@dataclass(slots=True, kw_only=True)
class BroadcastNotify(Message):
    """Voice broadcast offer: ``SourceID``/``TargetID`` instead of ``DeviceID``."""

    device_id: str = text("DeviceID")
    source_id: str | None = text("SourceID", required=True)
    target_id: str | None = text("TargetID", required=True)


@register("Response", "Broadcast")
@compile_node
@dataclass(slots=True, kw_only=True)
class BroadcastResponse(Message):
    result: str | None = text("Result", upper=True)


@register("Notify", "DeviceUpgradeResult")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceUpgradeResult(Message):
    session_id: str | None = text("SessionID")
    firmware: str | None = text("Firmware")
    upgrade_result: str | None = text("UpgradeResult", upper=True)
    upgrade_failed_reason: str | None = text("UpgradeFailedReason")


@register("Notify", "UploadSnapShotFinished")
@compile_node
@dataclass(slots=True, kw_only=True)
class UploadSnapShotFinished(Message):
    session_id: str | None = text("SessionID")
    snap_shot_list: SnapShotList | None = node("SnapShotList", SnapShotList)


@register("Notify", "VideoUploadNotify")
@compile_node
@dataclass(slots=True, kw_only=True)
class VideoUploadNotify(Message):
    time: str | None = text("Time")
    longitude: float | None = number("Longitude")
    latitude: float | None = number("Latitude")


# ---------------------------------------------------------------------------------------------
# Controls


@register("Control", "DeviceControl")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceControl(Message):
    """One sub-command per message (reference §4.1, §4.3). ``IFameCmd`` is the 2016 spelling,
    ``IFrameCmd`` the 2022 one; both are read, and ``encode(..., gb2022=True)`` writes the
    latter."""

    ptz_cmd: str | None = text("PTZCmd")
    ptz_cmd_params: PtzCmdParams | None = node("PTZCmdParams", PtzCmdParams)
    tele_boot: str | None = text("TeleBoot")
    record_cmd: str | None = text("RecordCmd")
    stream_number: int | None = integer("StreamNumber")
    guard_cmd: str | None = text("GuardCmd")
    alarm_cmd: str | None = text("AlarmCmd")
    info: AlarmSelector | None = node("Info", AlarmSelector)
    iframe_cmd: str | None = text("IFameCmd", tag_2022="IFrameCmd")
    drag_zoom_in: ZoomBox | None = node("DragZoomIn", ZoomBox)
    drag_zoom_out: ZoomBox | None = node("DragZoomOut", ZoomBox)
    home_position: HomePosition | None = node("HomePosition", HomePosition)
    ptz_precise_ctrl: PtzPrecise | None = node("PTZPreciseCtrl", PtzPrecise)
    format_sd_card: int | None = integer("FormatSDCard")
    target_track: str | None = text("TargetTrack")
    device_id2: str | None = text("DeviceID2")
    target_area: ZoomBox | None = node("TargetArea", ZoomBox)
    device_upgrade: DeviceUpgrade | None = node("DeviceUpgrade", DeviceUpgrade)
    extra_info: tuple[str, ...] = texts("ExtraInfo")

    # Sub-commands answered with a Response/DeviceControl (reference §4.1).
    ANSWERED: ClassVar[frozenset[str]] = frozenset(
        {"RecordCmd", "GuardCmd", "AlarmCmd", "HomePosition", "DeviceUpgrade"}
    )
    _COMMANDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ptz_cmd", "PTZCmd"),
        ("tele_boot", "TeleBoot"),
        ("record_cmd", "RecordCmd"),
        ("guard_cmd", "GuardCmd"),
        ("alarm_cmd", "AlarmCmd"),
        ("iframe_cmd", "IFrameCmd"),
        ("drag_zoom_in", "DragZoomIn"),
        ("drag_zoom_out", "DragZoomOut"),
        ("home_position", "HomePosition"),
        ("ptz_precise_ctrl", "PTZPreciseCtrl"),
        ("format_sd_card", "FormatSDCard"),
        ("target_track", "TargetTrack"),
        ("device_upgrade", "DeviceUpgrade"),
    )

    @property
    def commands(self) -> list[str]:
        """The sub-commands present, in the standard's names."""
        return [name for attr, name in self._COMMANDS if getattr(self, attr) is not None]

    @property
    def expects_response(self) -> bool:
        return any(c in self.ANSWERED for c in self.commands)


@register("Response", "DeviceControl")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceControlResponse(Message):
    result: str | None = text("Result", upper=True)


@register("Control", "DeviceConfig")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceConfig(Message):
    basic_param: BasicParam | None = node("BasicParam", BasicParam)
    svac_encode_config: Block | None = block("SVACEncodeConfig")
    svac_decode_config: Block | None = block("SVACDecodeConfig")
    video_param_attribute: Block | None = block("VideoParamAttribute")  # 2022 from here
    video_record_plan: Block | None = block("VideoRecordPlan")
    video_alarm_record: Block | None = block("VideoAlarmRecord")
    picture_mask: Block | None = block("PictureMask")
    frame_mirror: Block | None = block("FrameMirror")
    alarm_report: Block | None = block("AlarmReport")
    osd_config: Block | None = block("OSDConfig")
    snap_shot_config: Block | None = block("SnapShotConfig")
    extra_info: tuple[str, ...] = texts("ExtraInfo")


@register("Response", "DeviceConfig")
@compile_node
@dataclass(slots=True, kw_only=True)
class DeviceConfigResponse(Message):
    result: str | None = text("Result", upper=True)


# ---------------------------------------------------------------------------------------------
# bytes ⇄ messages


class UnknownCommand(DecodeError):
    """Well-formed MANSCDP whose (root, CmdType) is not one the standard defines."""

    def __init__(self, root: str, cmd_type: str) -> None:
        super().__init__(f"unknown command {root}/{cmd_type[:32]}")
        self.root = root
        self.cmd_type = cmd_type


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded body: the message, the charset the bytes really used (``UTF-8``,
    ``GB18030``, or ``None`` for pure ASCII), the prolog's declared encoding, and the repairs."""

    message: Message
    charset: str | None
    declared: str | None
    repairs: tuple[str, ...]


def decode(data: bytes) -> Decoded:
    """Bytes of a MANSCDP body → typed message. Raises :class:`DecodeError` (never anything
    else) with a reason when the body cannot be understood.

    Any other exception is a bug of the decoder (bad input must only ever give
    ``DecodeError``): it still becomes a ``DecodeError`` for the caller, which answers the peer
    as for a bad body, but it is logged at error level with its traceback
    (``manscdp.decoder_bug``) so that it is seen and fixed, not taken for the peer's fault."""
    try:
        return _decode(data)
    except DecodeError:
        raise
    except Exception as exc:
        log.error("manscdp.decoder_bug", error=type(exc).__name__, size=len(data), exc_info=exc)
        raise DecodeError(f"cannot decode: {type(exc).__name__}") from None


def _decode(data: bytes) -> Decoded:
    parsed = xmlio.parse(data)
    root = parsed.root
    root_tag = root.tag if isinstance(root.tag, str) else ""
    cmd_type = None
    for child in root:
        if isinstance(child.tag, str) and child.tag.lower() == "cmdtype":
            cmd_type = (child.text or "").strip()
            break
    if not cmd_type:
        raise DecodeError(f"<{root_tag[:32]}> has no CmdType")
    cls = REGISTRY.get((root_tag.lower(), cmd_type.lower()))
    if cls is None:
        raise UnknownCommand(root_tag, cmd_type)
    repairs = list(parsed.repairs)
    # CmdType is the class itself; keep it out of ``extra``.
    for child in list(root):
        if isinstance(child.tag, str) and child.tag.lower() == "cmdtype":
            root.remove(child)
    msg = read_node(cls, root, repairs)
    if msg.sn is not None and msg.sn < 0:
        raise DecodeError(f"negative SN {msg.sn}")
    return Decoded(msg, parsed.charset, parsed.declared, tuple(repairs))


def to_element(msg: Message, gb2022: bool = False) -> Any:
    root = etree.Element(msg.ROOT)
    etree.SubElement(root, "CmdType").text = msg.CMD
    write_node(msg, root, gb2022)
    return root


def encode(
    msg: Message, charset: str = "GB2312", *, declare: str | None = None, gb2022: bool = False
) -> bytes:
    """A message → body bytes with a double-quoted prolog. ``charset``: how to encode
    (``GB2312``/``GB18030``/``UTF-8``); ``declare``: the prolog's name (default ``charset``)."""
    return xmlio.serialize(to_element(msg, gb2022), charset, declare)
