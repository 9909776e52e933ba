"""One realistic instance of every registered MANSCDP message, every field filled.

Shared by the round-trip tests and the mutation fuzzing. Values are what real equipment sends
(reference §3–§5); names and addresses are Chinese so the charset paths are exercised. Some
names use only characters whose GB 2312 bytes happen to be valid UTF-8 too (一, 专, 业...),
which is where a charset guesser goes wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.manscdp import Block, Node
from gateway.manscdp import messages as m

NVR = "34020000001180000001"
CAM = "34020000001310000001"
CAM2 = "34020000001310000002"
IPC = "34020000001320000001"
ALARM_IN = "34020000001340000001"
GROUP = "34020000002150000001"
VORG = "34020000002160000001"


def catalog_info() -> m.CatalogInfo:
    return m.CatalogInfo(
        ptz_type=1,
        position_type=4,
        room_type=1,
        use_type=1,
        supply_light_type=2,
        direction_type=4,
        resolution="6/5/4",
        business_group_id=GROUP,
        download_speed="1/2/4/8",
        svc_space_support_mode=1,
        svc_time_support_mode=2,
        photoelectric_imaging_type="1/2",
        capture_position_type="1010101",
        stream_number_list="0/1/2",
        ssvc_ratio_support_list="4:3/2:1",
        mobile_device_type=4,
        horizontal_field_angle=92.5,
        vertical_field_angle=51.25,
        max_view_distance=120.0,
        grassroots_code="340201001",
        point_type=2,
        point_common_name="北门岗亭",
        mac="44-19-b6-0a-3c-7e",
        function_type="01/03",
        encode_type="2",
        install_time="2021-06-01T09:00:00",
        management_unit="合肥市公安局",
        contact_info="0551-62801234",
        record_save_days=30,
        industrial_classification="8310",
    )


def catalog_item(
    device_id: str = CAM, name: str = "北门一号", event: str | None = None
) -> m.CatalogItem:
    return m.CatalogItem(
        device_id=device_id,
        event=event if event is not None else "UPDATE",
        name=name,
        manufacturer="Hikvision",
        model="DS-2CD2T47",
        owner="Owner",
        civil_code="340200",
        block="340201A",
        address="合肥市蜀山区长江西路 88 号 & 北门",
        parental=0,
        parent_id=f"{NVR}/{VORG}",
        safety_way=0,
        register_way=1,
        security_level_code="A",
        cert_num="5A3F0001",
        certifiable=1,
        err_code=0,
        end_time="2030-12-31T23:59:59",
        secrecy=0,
        ip_address="192.168.1.64",
        port=8000,
        password="12345678",
        status="ON",
        longitude=117.2272,
        latitude=31.8206,
        business_group_id=GROUP,
        info=catalog_info(),
    )


def basic_param() -> m.BasicParam:
    return m.BasicParam(
        name="IPC-01 大门",
        expiration=3600,
        heart_beat_interval=60,
        heart_beat_count=3,
        position_capability=1,
        longitude=117.2272,
        latitude=31.8206,
    )


def record_plan() -> Block:
    segment = Block(
        "TimeSegment",
        children=tuple(
            Block(tag, value)
            for tag, value in (
                ("StartHour", "8"),
                ("StartMin", "0"),
                ("StartSec", "0"),
                ("StopHour", "18"),
                ("StopMin", "30"),
                ("StopSec", "0"),
            )
        ),
    )
    schedule = Block(
        "RecordSchedule",
        children=(Block("WeekDayNum", "1"), Block("TimeSegmentSumNum", "2"), segment, segment),
    )
    return Block(
        "VideoRecordPlan",
        children=(
            Block("RecordEnable", "1"),
            Block("RecordScheduleSumNum", "1"),
            schedule,
            Block("StreamNumber", "0"),
        ),
    )


def picture_mask() -> Block:
    region = Block(
        "RegionList",
        attrib=(("Num", "2"),),
        children=tuple(
            Block("Item", children=(Block("Seq", str(i)), Block("Point", f"{i},10,{i + 100},200")))
            for i in (1, 2)
        ),
    )
    return Block("PictureMask", children=(Block("On", "1"), Block("SumNum", "2"), region))


def osd_config() -> Block:
    return Block(
        "OSDConfig",
        children=(
            Block("Length", "1920"),
            Block("Width", "1080"),
            Block("TimeX", "10"),
            Block("TimeY", "10"),
            Block("TimeEnable", "1"),
            Block("TimeType", "1"),
            Block("TextEnable", "1"),
            Block("SumNum", "1"),
            Block(
                "Item", children=(Block("Text", "北门 一号"), Block("X", "10"), Block("Y", "60"))
            ),
        ),
    )


def config_blocks(snap_tag: str) -> dict[str, Any]:
    """The Block-typed configuration fields shared by DeviceConfig and ConfigDownload."""
    return {
        "svac_encode_config": Block(
            "SVACEncodeConfig",
            children=(
                Block("ROIParam", children=(Block("ROIFlag", "1"), Block("ROINumber", "1"))),
                Block("SVCParam", children=(Block("SVCSpaceDomainMode", "1"),)),
                Block("SurveillanceParam", children=(Block("TimeFlag", "1"),)),
                Block("AudioParam", children=(Block("AudioRecognitionFlag", "0"),)),
            ),
        ),
        "svac_decode_config": Block(
            "SVACDecodeConfig",
            children=(Block("SVCParam", children=(Block("SVCSTMMode", "1"),)),),
        ),
        "video_param_attribute": Block(
            "VideoParamAttribute",
            children=(
                Block(
                    "Item",
                    children=(
                        Block("StreamNumber", "0"),
                        Block("VideoFormat", "2"),
                        Block("Resolution", "6"),
                        Block("FrameRate", "25"),
                        Block("BitRateType", "1"),
                        Block("VideoBitRate", "4096"),
                    ),
                ),
            ),
        ),
        "video_record_plan": record_plan(),
        "video_alarm_record": Block(
            "VideoAlarmRecord",
            children=(
                Block("RecordEnable", "1"),
                Block("RecordTime", "60"),
                Block("PreRecordTime", "10"),
                Block("StreamNumber", "0"),
            ),
        ),
        "picture_mask": picture_mask(),
        "frame_mirror": Block("FrameMirror", "1"),
        "alarm_report": Block(
            "AlarmReport", children=(Block("MotionDetection", "1"), Block("FieldDetection", "0"))
        ),
        "osd_config": osd_config(),
        snap_tag: Block(
            "SnapShotConfig" if snap_tag == "snap_shot_config" else "SnapShot",
            children=(
                Block("SnapNum", "3"),
                Block("Interval", "1"),
                Block("UploadURL", "http://192.168.1.10:8080/snap"),
                Block("SessionID", "7c2a0a6e3b7b4f299d6f2f5e1b0c9a11aa"),
            ),
        ),
    }


EXTRA_INFO = ("vendor=hik", "附加信息")


def samples() -> dict[type[m.Message], m.Message]:
    """Every registered class → a fully filled instance (fresh objects on each call)."""
    zoom = m.ZoomBox(
        length=1920, width=1080, mid_point_x=960, mid_point_y=540, length_x=320, length_y=180
    )
    home = m.HomePosition(enabled=1, reset_time=60, preset_index=1)
    built: list[m.Message] = [
        m.Keepalive(
            sn=43,
            device_id=IPC,
            status="OK",
            info=m.KeepaliveInfo(device_ids=(CAM, CAM2)),
            extra_info=EXTRA_INFO,
        ),
        m.CatalogQuery(
            sn=4226, device_id=NVR, start_time="2024-05-01T00:00:00", end_time="2024-05-20T23:59:59"
        ),
        m.CatalogResponse(
            sn=4226,
            device_id=NVR,
            result="OK",
            sum_num=3,
            items=(
                catalog_item(CAM, "北门一号"),
                catalog_item(CAM2, "一专业"),
                catalog_item("34020000001310000003", "Gate-North"),
            ),
            extra_info=EXTRA_INFO,
        ),
        m.CatalogNotify(
            sn=4231,
            device_id=NVR,
            sum_num=2,
            items=(catalog_item(CAM, event="ADD"), catalog_item(CAM2, "院子", event="UPDATE")),
        ),
        m.DeviceInfoQuery(sn=17430, device_id=NVR),
        m.DeviceInfoResponse(
            sn=17430,
            device_id=NVR,
            device_name="NVR-01 主楼",
            result="OK",
            manufacturer="Hikvision",
            model="DS-7608N",
            firmware="V4.30.085",
            channel=8,
            reason="正常",
            extra_info=EXTRA_INFO,
        ),
        m.DeviceStatusQuery(sn=17431, device_id=IPC),
        m.DeviceStatusResponse(
            sn=17431,
            device_id=IPC,
            result="OK",
            online="ONLINE",
            status="OK",
            reason="硬盘正常",
            encode="ON",
            record="OFF",
            device_time="2024-05-20T10:20:01",
            alarm_status=(
                m.AlarmStatusItem(device_id=ALARM_IN, duty_status="OFFDUTY"),
                m.AlarmStatusItem(device_id="34020000001340000002", duty_status="ALARM"),
            ),
            extra_info=EXTRA_INFO,
        ),
        m.RecordInfoQuery(
            sn=5501,
            device_id=CAM,
            start_time="2024-05-20T00:00:00",
            end_time="2024-05-20T23:59:59",
            file_path="/record/ch1",
            address="北门",
            secrecy=0,
            type="all",
            recorder_id=NVR,
            indistinct_query=1,
            stream_number=0,
            alarm_method="1/2",
            alarm_type="2",
        ),
        m.RecordInfoResponse(
            sn=5501,
            device_id=CAM,
            name="北门一号",
            sum_num=2,
            items=tuple(
                m.RecordItem(
                    device_id=CAM,
                    name="北门一号",
                    file_path=f"/record/ch1/{i}.ps",
                    address="北门",
                    start_time=f"2024-05-20T0{8 + i}:00:00",
                    end_time=f"2024-05-20T0{8 + i}:59:59",
                    secrecy=0,
                    type="time" if i == 0 else "alarm",
                    recorder_id=NVR,
                    file_size=524288000 + i,
                    record_location=NVR,
                    stream_number=i,
                )
                for i in (0, 1)
            ),
            extra_info=EXTRA_INFO,
        ),
        m.ConfigDownloadQuery(sn=7001, device_id=IPC, config_type="BasicParam/VideoParamOpt"),
        m.ConfigDownloadResponse(
            sn=7001,
            device_id=IPC,
            result="OK",
            basic_param=basic_param(),
            video_param_opt=m.VideoParamOpt(download_speed="1/2/4", resolution="6/4"),
            extra_info=EXTRA_INFO,
            **config_blocks("snap_shot"),
        ),
        m.PresetQuery(sn=8001, device_id=CAM),
        m.PresetQueryResponse(
            sn=8001,
            device_id=CAM,
            sum_num=3,
            items=(
                m.Preset(preset_id=1, preset_name="大门"),
                m.Preset(preset_id=2, preset_name="Parking"),
                m.Preset(preset_id=255, preset_name="一业"),
            ),
        ),
        m.HomePositionQuery(sn=8101, device_id=CAM),
        m.HomePositionResponse(sn=8101, device_id=CAM, result="OK", home_position=home),
        m.CruiseTrackListQuery(sn=8102, device_id=CAM),
        m.CruiseTrackListResponse(
            sn=8102,
            device_id=CAM,
            result="OK",
            sum_num=2,
            items=(m.CruiseTrack(number=0, name="巡航一"), m.CruiseTrack(number=1, name="Night")),
        ),
        m.CruiseTrackQuery(sn=8103, device_id=CAM, number=0),
        m.CruiseTrackResponse(
            sn=8103,
            device_id=CAM,
            result="OK",
            number=0,
            name="巡航一",
            sum_num=2,
            items=(
                m.CruisePoint(preset_index=1, stay_time=10, speed=5),
                m.CruisePoint(preset_index=2, stay_time=15, speed=15),
            ),
        ),
        m.PtzPositionQuery(sn=8104, device_id=CAM),
        m.PtzPositionResponse(
            sn=8104,
            device_id=CAM,
            result="OK",
            pan=123.45,
            tilt=-10.5,
            zoom=4.0,
            horizontal_field_angle=60.25,
            vertical_field_angle=33.75,
            max_view_distance=150.0,
        ),
        m.PtzPositionNotify(
            sn=8105,
            device_id=CAM,
            pan=359.99,
            tilt=90.0,
            zoom=1.0,
            horizontal_field_angle=12.5,
            vertical_field_angle=7.0,
            max_view_distance=800.0,
        ),
        m.SDCardStatusQuery(sn=8106, device_id=IPC),
        m.SDCardStatusResponse(
            sn=8106,
            device_id=IPC,
            result="OK",
            sum_num=2,
            items=(
                m.SDCard(
                    id=1,
                    hdd_name="SD1",
                    status="ok",
                    format_progress=100,
                    capacity=61440.0,
                    free_space=1024.5,
                ),
                m.SDCard(
                    id=2,
                    hdd_name="SD2",
                    status="formatting",
                    format_progress=42,
                    capacity=30720.0,
                    free_space=0.0,
                ),
            ),
        ),
        m.MobilePositionQuery(sn=4250, device_id="34020000001320000007", interval=5),
        m.MobilePositionNotify(
            sn=4252,
            device_id="34020000001320000007",
            time="2024-05-20T10:30:05",
            longitude=117.2272,
            latitude=31.8206,
            speed=32.5,
            direction=90.0,
            altitude=20.0,
            sum_num=2,
            items=tuple(
                m.PositionItem(
                    device_id="34020000001320000007",
                    capture_time=f"2024-05-20T10:30:0{i}",
                    longitude=117.2275 + i / 10000,
                    latitude=31.8207,
                    speed=32.5,
                    direction=90.0,
                    altitude=20.0,
                    height=3.0,
                )
                for i in (3, 4)
            ),
        ),
        m.AlarmNotify(
            sn=9,
            device_id=CAM,
            alarm_priority=1,
            alarm_method=5,
            alarm_time="2024-05-20T07:38:35",
            alarm_description="移动侦测 Motion",
            longitude=117.2272,
            latitude=31.8206,
            info=m.AlarmInfo(alarm_type=6, alarm_type_param=m.AlarmTypeParam(event_type=1)),
            extra_info=EXTRA_INFO,
        ),
        m.AlarmResponse(sn=9, device_id=CAM, result="OK"),
        m.AlarmQuery(
            sn=4240,
            device_id=NVR,
            start_alarm_priority=0,
            end_alarm_priority=4,
            alarm_method="1/2",
            alarm_type="2",
            start_alarm_time="2024-05-20T00:00:00",
            end_alarm_time="2024-05-21T00:00:00",
        ),
        m.MediaStatus(sn=301, device_id=CAM, notify_type=121),
        m.BroadcastNotify(
            sn=302,
            device_id=CAM,
            source_id="34020000002000000001",
            target_id="34020000001370000001",
        ),
        m.BroadcastResponse(sn=302, device_id="34020000001370000001", result="OK"),
        m.DeviceUpgradeResult(
            sn=303,
            device_id=IPC,
            session_id="7c2a0a6e-3b7b-4f29-9d6f-2f5e1b0c9a11",
            firmware="V5.7.0",
            upgrade_result="ERROR",
            upgrade_failed_reason="01",
        ),
        m.UploadSnapShotFinished(
            sn=304,
            device_id=IPC,
            session_id="7c2a0a6e-3b7b-4f29-9d6f-2f5e1b0c9a11",
            snap_shot_list=m.SnapShotList(
                file_ids=tuple(f"{IPC}0220240520103000123{n:02d}" for n in (1, 2, 3))
            ),
        ),
        m.VideoUploadNotify(
            sn=305, device_id=IPC, time="2024-05-20T10:31:00", longitude=117.2272, latitude=31.8206
        ),
        m.DeviceControl(
            sn=9001,
            device_id=CAM,
            ptz_cmd="A50F0101808000B6",
            ptz_cmd_params=m.PtzCmdParams(preset_name="大门", cruise_track_name="巡航一"),
            tele_boot="Boot",
            record_cmd="Record",
            stream_number=0,
            guard_cmd="SetGuard",
            alarm_cmd="ResetAlarm",
            info=m.AlarmSelector(alarm_method="2", alarm_type="1"),
            iframe_cmd="Send",
            drag_zoom_in=zoom,
            drag_zoom_out=dataclasses.replace(zoom, mid_point_x=100),
            home_position=home,
            ptz_precise_ctrl=m.PtzPrecise(pan=123.45, tilt=10.0, zoom=4.0),
            format_sd_card=1,
            target_track="Manual",
            device_id2="34020000001310000009",
            target_area=m.ZoomBox(
                length=1920,
                width=1080,
                mid_point_x=400,
                mid_point_y=300,
                length_x=200,
                length_y=150,
            ),
            device_upgrade=m.DeviceUpgrade(
                firmware="V5.7.0",
                file_url="http://192.168.1.10/fw/ipc.bin?a=1&b=2",
                manufacturer="Hikvision",
                session_id="7c2a0a6e-3b7b-4f29-9d6f-2f5e1b0c9a11",
            ),
            extra_info=EXTRA_INFO,
        ),
        m.DeviceControlResponse(sn=9002, device_id=CAM, result="OK"),
        m.DeviceConfig(
            sn=7002,
            device_id=IPC,
            basic_param=basic_param(),
            extra_info=EXTRA_INFO,
            **config_blocks("snap_shot_config"),
        ),
        m.DeviceConfigResponse(sn=7002, device_id=IPC, result="OK"),
    ]
    return {type(msg): msg for msg in built}


def unset_fields(node: Node, path: str = "") -> list[str]:
    """Declared fields of ``node`` (recursively) left at None or empty: a sample that misses a
    field does not test it."""
    missing: list[str] = []
    for spec in node._specs:
        value: Any = getattr(node, spec.attr)
        where = f"{path}{spec.attr}"
        if value is None or value == () or value == "":
            missing.append(where)
        elif isinstance(value, Node):
            missing.extend(unset_fields(value, where + "."))
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            for i, item in enumerate(value):
                missing.extend(unset_fields(item, f"{where}[{i}]."))
    return missing
