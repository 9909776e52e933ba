"""Typed MANSCDP messages: a round trip for every registered class, the exact envelope we send,
and the reference's example bodies (reference §3–§5) read into the fields they carry."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import pytest
from lxml import etree

from gateway.manscdp import REGISTRY, Block, decode, encode
from gateway.manscdp import messages as m
from tests.manscdp import samples
from tests.manscdp.samples import CAM, IPC, NVR

SAMPLES = samples.samples()
CLASSES = sorted(set(REGISTRY.values()), key=lambda cls: (cls.ROOT, cls.CMD))
PROLOG_GB2312 = b'<?xml version="1.0" encoding="GB2312"?>'


def by_name(cls: type[m.Message]) -> str:
    return f"{cls.ROOT}-{cls.CMD}"


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=by_name)
def test_every_registered_class_has_a_fully_filled_sample(cls: type[m.Message]) -> None:
    assert cls in SAMPLES, f"no sample for {cls.__name__}: add one to tests/manscdp/samples.py"
    sample = SAMPLES[cls]
    assert type(sample) is cls
    assert samples.unset_fields(sample) == []


@pytest.mark.parametrize("charset", ["GB2312", "GB18030", "UTF-8"])
@pytest.mark.parametrize("gb2022", [False, True], ids=["2016", "2022"])
@pytest.mark.parametrize("cls", CLASSES, ids=by_name)
def test_round_trip(cls: type[m.Message], charset: str, gb2022: bool) -> None:
    msg = SAMPLES[cls]
    data = encode(msg, charset, gb2022=gb2022)
    decoded = decode(data)
    assert decoded.message == msg
    assert type(decoded.message) is cls
    assert decoded.repairs == ()
    assert decoded.declared == charset
    if data.isascii():
        assert decoded.charset is None
    else:
        assert decoded.charset == ("UTF-8" if charset == "UTF-8" else "GB18030")
    # Sending what we received gives the same bytes: nothing drifts through a relay hop.
    assert encode(decoded.message, charset, gb2022=gb2022) == data


@pytest.mark.parametrize("cls", CLASSES, ids=by_name)
def test_envelope_prolog_and_first_elements(cls: type[m.Message]) -> None:
    data = encode(SAMPLES[cls])
    assert data.startswith(PROLOG_GB2312 + b"\r\n")
    root = etree.fromstring(data.split(b"?>", 1)[1].decode("gb18030"))
    assert root.tag == cls.ROOT
    assert [child.tag for child in root[:3]] == ["CmdType", "SN", "DeviceID"]
    assert root[0].text == cls.CMD
    assert root[1].text == str(SAMPLES[cls].sn)


def test_prolog_names_the_charset_asked_for_or_declared() -> None:
    msg = SAMPLES[m.Keepalive]
    assert encode(msg, "UTF-8").startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert encode(msg, "gb18030").startswith(b'<?xml version="1.0" encoding="GB18030"?>')
    gbk_declared_gb2312 = encode(msg, "GBK", declare="GB2312")
    assert gbk_declared_gb2312.startswith(PROLOG_GB2312)


@pytest.mark.parametrize(
    "name",
    ["北门一号", "一专业", "为之", "大门·东", "堃镕", "Gate-North", "A&B <1>", "鍖楅棬"],
)
@pytest.mark.parametrize("charset", ["GB2312", "UTF-8"])
def test_chinese_names_come_back_equal(name: str, charset: str) -> None:
    item = samples.catalog_item(name=name)
    msg = m.CatalogResponse(sn=1, device_id=NVR, sum_num=1, items=(item,))
    data = encode(msg, charset)
    if name != "鍖楅棬" and "&" not in name:
        assert name.encode("gb18030" if charset == "GB2312" else "utf-8") in data
    decoded = decode(data)
    assert decoded.message == msg
    assert isinstance(decoded.message, m.CatalogResponse)
    assert decoded.message.items[0].name == name


def test_gb2312_bytes_that_are_also_valid_utf8_follow_the_declaration() -> None:
    # 一专业 in GB 2312 is D2BB D7A8 D2B5: every pair is also a valid two-byte UTF-8 sequence.
    raw = "一专业".encode("gb2312")
    raw.decode("utf-8")  # the trap: this does not fail
    msg = m.DeviceInfoResponse(sn=2, device_id=NVR, device_name="一专业", result="OK")
    decoded = decode(encode(msg, "GB2312"))
    assert isinstance(decoded.message, m.DeviceInfoResponse)
    assert decoded.message.device_name == "一专业"
    assert decoded.charset == "GB18030"


def test_gb_text_that_encodes_to_valid_utf8_is_sent_as_references() -> None:
    # 鍖楅棬 is 北门's UTF-8 read as GB 18030: written in GB it would be read back as 北门.
    name = "鍖楅棬"
    assert name.encode("gb18030") == "北门".encode()
    msg = m.DeviceInfoResponse(sn=3, device_id=NVR, device_name=name, result="OK")
    data = encode(msg, "GB2312")
    assert data.startswith(PROLOG_GB2312)
    assert data.isascii()
    assert b"<DeviceName>&#37718;" in data  # 鍖
    decoded = decode(data)
    assert decoded.message == msg
    assert (decoded.charset, decoded.declared) == (None, "GB2312")


def test_iframe_spelling_follows_the_edition() -> None:
    msg = m.DeviceControl(sn=9003, device_id=CAM, iframe_cmd="Send")
    assert b"<IFameCmd>Send</IFameCmd>" in encode(msg)
    assert b"IFrameCmd" not in encode(msg)
    assert b"<IFrameCmd>Send</IFrameCmd>" in encode(msg, gb2022=True)
    assert b"IFameCmd" not in encode(msg, gb2022=True)
    for data in (encode(msg), encode(msg, gb2022=True)):
        decoded = decode(data).message
        assert isinstance(decoded, m.DeviceControl)
        assert decoded.iframe_cmd == "Send"
        assert decoded.commands == ["IFrameCmd"]
        assert not decoded.expects_response


def test_lists_carry_num_and_empty_lists_follow_annex_m() -> None:
    data = encode(SAMPLES[m.CatalogResponse])
    assert b'<DeviceList Num="3">' in data
    assert data.count(b"<Item>") == 3
    empty_catalog = encode(m.CatalogResponse(sn=1, device_id=NVR, sum_num=0))
    assert b"DeviceList" not in empty_catalog
    no_presets = encode(m.PresetQueryResponse(sn=1, device_id=CAM, sum_num=0))
    assert b'<PresetList Num="0"' in no_presets
    decoded = decode(no_presets).message
    assert isinstance(decoded, m.PresetQueryResponse)
    assert decoded.items == ()


def test_text_is_escaped_not_concatenated() -> None:
    evil = "</Name><Status>OFF</Status><Name>"
    msg = m.CatalogResponse(
        sn=1, device_id=NVR, items=(m.CatalogItem(device_id=CAM, name=evil, status="ON"),)
    )
    data = encode(msg)
    assert b"&lt;/Name&gt;" in data
    decoded = decode(data).message
    assert isinstance(decoded, m.CatalogResponse)
    assert decoded.items[0].name == evil
    assert decoded.items[0].status == "ON"


def test_unknown_elements_survive_a_relay_hop() -> None:
    body = (
        '<?xml version="1.0" encoding="GB2312"?>\r\n<Response><CmdType>Catalog</CmdType>'
        "<SN>1</SN><DeviceID>34020000001180000001</DeviceID><SumNum>1</SumNum>"
        '<DeviceList Num="1"><Item><DeviceID>34020000001310000001</DeviceID>'
        '<StreamNum>2</StreamNum><VendorBlock a="1"><X>一</X><Y>2</Y></VendorBlock>'
        "</Item></DeviceList></Response>"
    ).encode("gb18030")
    first = decode(body).message
    assert isinstance(first, m.CatalogResponse)
    assert [tag for tag, _ in first.items[0].extra] == ["StreamNum", "VendorBlock"]
    assert first.items[0].extra_text("streamnum") == "2"
    again = encode(first)
    assert b"<StreamNum>2</StreamNum>" in again
    assert b'<VendorBlock a="1">' in again
    second = decode(again).message
    assert second == first
    assert encode(second) == again


def test_derived_views() -> None:
    item = samples.catalog_item()
    assert item.group_id == samples.GROUP
    assert dataclasses.replace(item, business_group_id=None).group_id == samples.GROUP
    assert item.parent_ids == (NVR, samples.VORG)
    msg = SAMPLES[m.CatalogResponse]
    assert msg.key == (NVR, "Catalog", 4226)
    ctrl = m.DeviceControl(sn=1, device_id=CAM, record_cmd="Record")
    assert ctrl.commands == ["RecordCmd"]
    assert ctrl.expects_response


# -- the reference's example bodies ------------------------------------------------------------

PROLOG = '<?xml version="1.0" encoding="GB2312"?>\n'


def body(xml: str) -> bytes:
    """An example as a device sends it: GB2312 prolog, GB 18030 bytes, CRLF lines."""
    return (PROLOG + xml.strip() + "\n").replace("\n", "\r\n").encode("gb18030")


CATALOG_RESPONSE_2016 = body("""
<Response>
<CmdType>Catalog</CmdType>
<SN>4226</SN>
<DeviceID>34020000001180000001</DeviceID>
<SumNum>4</SumNum>
<DeviceList Num="1">
<Item>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<Manufacturer>Hikvision</Manufacturer>
<Model>DS-2CD2T47</Model>
<Owner>Owner</Owner>
<CivilCode>340200</CivilCode>
<Address>North gate</Address>
<Parental>0</Parental>
<ParentID>34020000001180000001</ParentID>
<SafetyWay>0</SafetyWay>
<RegisterWay>1</RegisterWay>
<Secrecy>0</Secrecy>
<IPAddress>192.168.1.64</IPAddress>
<Port>8000</Port>
<Status>ON</Status>
<Longitude>117.2272</Longitude>
<Latitude>31.8206</Latitude>
<Info>
<PTZType>1</PTZType>
<DownloadSpeed>1/2/4/8</DownloadSpeed>
</Info>
</Item>
</DeviceList>
</Response>
""")

CATALOG_ITEM_2022 = """
<Item>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<Manufacturer>Hikvision</Manufacturer>
<Model>DS-2CD2T47</Model>
<CivilCode>340200</CivilCode>
<Address>North gate</Address>
<Parental>0</Parental>
<ParentID>34020000001180000001</ParentID>
<RegisterWay>1</RegisterWay>
<Secrecy>0</Secrecy>
<IPAddress>192.168.1.64</IPAddress>
<Port>8000</Port>
<Status>ON</Status>
<Longitude>117.2272</Longitude>
<Latitude>31.8206</Latitude>
<Info>
<PTZType>1</PTZType>
<StreamNumberList>0/1</StreamNumberList>
<DownloadSpeed>1/2/4</DownloadSpeed>
<GrassrootsCode>000000</GrassrootsCode>
<PointType>2</PointType>
</Info>
</Item>
"""

CATALOG_RESPONSE_2022 = body(f"""
<Response>
<CmdType>Catalog</CmdType>
<SN>4227</SN>
<DeviceID>34020000001180000001</DeviceID>
<SumNum>1</SumNum>
<DeviceList Num="1">
{CATALOG_ITEM_2022.strip()}
</DeviceList>
</Response>
""")

CATALOG_QUERY = body("""
<Query>
<CmdType>Catalog</CmdType>
<SN>4226</SN>
<DeviceID>34020000001180000001</DeviceID>
</Query>
""")

SUBSCRIBE_OK = body("""
<Response>
<CmdType>Catalog</CmdType>
<SN>4230</SN>
<DeviceID>34020000001180000001</DeviceID>
<Result>OK</Result>
</Response>
""")

KEEPALIVE_WITH_FAULTS = body("""
<Notify>
<CmdType>Keepalive</CmdType>
<SN>44</SN>
<DeviceID>34020000001180000001</DeviceID>
<Status>OK</Status>
<Info>
<DeviceID>34020000001310000003</DeviceID>
</Info>
</Notify>
""")

DEVICE_INFO = body("""
<Response>
<CmdType>DeviceInfo</CmdType>
<SN>17430</SN>
<DeviceID>34020000001180000001</DeviceID>
<DeviceName>NVR-01</DeviceName>
<Result>OK</Result>
<Manufacturer>Hikvision</Manufacturer>
<Model>DS-7608N</Model>
<Firmware>V4.30.085</Firmware>
<Channel>8</Channel>
</Response>
""")

DEVICE_STATUS = body("""
<Response>
<CmdType>DeviceStatus</CmdType>
<SN>17431</SN>
<DeviceID>34020000001320000001</DeviceID>
<Result>OK</Result>
<Online>ONLINE</Online>
<Status>OK</Status>
<Encode>ON</Encode>
<Record>OFF</Record>
<DeviceTime>2024-05-20T10:20:01</DeviceTime>
<Alarmstatus Num="1">
<Item>
<DeviceID>34020000001340000001</DeviceID>
<DutyStatus>OFFDUTY</DutyStatus>
</Item>
</Alarmstatus>
</Response>
""")

RECORD_QUERY = body("""
<Query>
<CmdType>RecordInfo</CmdType>
<SN>5501</SN>
<DeviceID>34020000001310000001</DeviceID>
<StartTime>2024-05-20T00:00:00</StartTime>
<EndTime>2024-05-20T23:59:59</EndTime>
<Secrecy>0</Secrecy>
<Type>all</Type>
</Query>
""")

RECORD_RESPONSE = body("""
<Response>
<CmdType>RecordInfo</CmdType>
<SN>5501</SN>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<SumNum>2</SumNum>
<RecordList Num="2">
<Item>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<StartTime>2024-05-20T08:00:00</StartTime>
<EndTime>2024-05-20T08:59:59</EndTime>
<Secrecy>0</Secrecy>
<Type>time</Type>
<FileSize>524288000</FileSize>
</Item>
<Item>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<StartTime>2024-05-20T09:00:00</StartTime>
<EndTime>2024-05-20T09:12:40</EndTime>
<Secrecy>0</Secrecy>
<Type>alarm</Type>
</Item>
</RecordList>
</Response>
""")

RECORD_NONE = body("""
<Response>
<CmdType>RecordInfo</CmdType>
<SN>5502</SN>
<DeviceID>34020000001310000001</DeviceID>
<Name>Gate-North</Name>
<SumNum>0</SumNum>
</Response>
""")

CONFIG_QUERY = body("""
<Query>
<CmdType>ConfigDownload</CmdType>
<SN>7001</SN>
<DeviceID>34020000001320000001</DeviceID>
<ConfigType>BasicParam/VideoParamOpt</ConfigType>
</Query>
""")

CONFIG_RESPONSE = body("""
<Response>
<CmdType>ConfigDownload</CmdType>
<SN>7001</SN>
<DeviceID>34020000001320000001</DeviceID>
<Result>OK</Result>
<BasicParam>
<Name>IPC-01</Name>
<Expiration>3600</Expiration>
<HeartBeatInterval>60</HeartBeatInterval>
<HeartBeatCount>3</HeartBeatCount>
</BasicParam>
</Response>
""")

PRESET_RESPONSE = body("""
<Response>
<CmdType>PresetQuery</CmdType>
<SN>8001</SN>
<DeviceID>34020000001310000001</DeviceID>
<SumNum>2</SumNum>
<PresetList Num="2">
<Item>
<PresetID>1</PresetID>
<PresetName>Gate</PresetName>
</Item>
<Item>
<PresetID>2</PresetID>
<PresetName>Parking</PresetName>
</Item>
</PresetList>
</Response>
""")

PTZ_CONTROL = body("""
<Control>
<CmdType>DeviceControl</CmdType>
<SN>9001</SN>
<DeviceID>34020000001310000001</DeviceID>
<PTZCmd>A50F0101808000B6</PTZCmd>
</Control>
""")

PTZ_CONTROL_WVP = body("""
<Control>
<CmdType>DeviceControl</CmdType>
<SN>9004</SN>
<DeviceID>34020000001310000001</DeviceID>
<PTZCmd>a50f0101808000b6</PTZCmd>
<Info>
<ControlPriority>5</ControlPriority>
</Info>
</Control>
""")

RECORD_CMD = body("""
<Control>
<CmdType>DeviceControl</CmdType>
<SN>9002</SN>
<DeviceID>34020000001310000001</DeviceID>
<RecordCmd>Record</RecordCmd>
</Control>
""")

CONTROL_RESPONSE = body("""
<Response>
<CmdType>DeviceControl</CmdType>
<SN>9002</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
</Response>
""")


def control(sub: str, sn: int = 9010) -> bytes:
    return body(f"""
<Control>
<CmdType>DeviceControl</CmdType>
<SN>{sn}</SN>
<DeviceID>34020000001310000001</DeviceID>
{sub.strip()}
</Control>
""")


TELEBOOT = control("<TeleBoot>Boot</TeleBoot>")
RECORD_STOP_2022 = control("<RecordCmd>StopRecord</RecordCmd>\n<StreamNumber>1</StreamNumber>")
GUARD = control("<GuardCmd>ResetGuard</GuardCmd>")
ALARM_RESET = control(
    "<AlarmCmd>ResetAlarm</AlarmCmd>\n"
    "<Info><AlarmMethod>2</AlarmMethod><AlarmType>1</AlarmType></Info>"
)
IFAME = control("<IFameCmd>Send</IFameCmd>")
DRAG_ZOOM_IN = control("""
<DragZoomIn>
<Length>1920</Length><Width>1080</Width>
<MidPointX>960</MidPointX><MidPointY>540</MidPointY>
<LengthX>320</LengthX><LengthY>180</LengthY>
</DragZoomIn>
""")
DRAG_ZOOM_OUT = control("""
<DragZoomOut>
<Length>1920</Length><Width>1080</Width>
<MidPointX>100</MidPointX><MidPointY>200</MidPointY>
<LengthX>640</LengthX><LengthY>360</LengthY>
</DragZoomOut>
""")
HOME_POSITION = control("""
<HomePosition>
<Enabled>1</Enabled><ResetTime>60</ResetTime><PresetIndex>1</PresetIndex>
</HomePosition>
""")
PTZ_PRESET_2022 = control("""
<PTZCmd>A50F018100010037</PTZCmd>
<PTZCmdParams><PresetName>Gate</PresetName></PTZCmdParams>
""")
PRECISE = control(
    "<PTZPreciseCtrl><Pan>123.45</Pan><Tilt>10.00</Tilt><Zoom>4.0</Zoom></PTZPreciseCtrl>"
)
FORMAT_SD = control("<FormatSDCard>1</FormatSDCard>")
TARGET_TRACK = control("""
<TargetTrack>Manual</TargetTrack>
<DeviceID2>34020000001310000009</DeviceID2>
<TargetArea><Length>1920</Length><Width>1080</Width><MidPointX>400</MidPointX>
<MidPointY>300</MidPointY><LengthX>200</LengthX><LengthY>150</LengthY></TargetArea>
""")
DEVICE_UPGRADE = control("""
<DeviceUpgrade>
<Firmware>V5.7.0</Firmware>
<FileURL>http://192.168.1.10/fw/ipc.bin</FileURL>
<Manufacturer>Hikvision</Manufacturer>
<SessionID>7c2a0a6e-3b7b-4f29-9d6f-2f5e1b0c9a11</SessionID>
</DeviceUpgrade>
""")

DEVICE_CONFIG = body("""
<Control>
<CmdType>DeviceConfig</CmdType>
<SN>7002</SN>
<DeviceID>34020000001320000001</DeviceID>
<BasicParam>
<Name>IPC-01</Name>
<Expiration>3600</Expiration>
<HeartBeatInterval>30</HeartBeatInterval>
<HeartBeatCount>3</HeartBeatCount>
</BasicParam>
</Control>
""")

DEVICE_CONFIG_RESPONSE = body("""
<Response>
<CmdType>DeviceConfig</CmdType>
<SN>7002</SN>
<DeviceID>34020000001320000001</DeviceID>
<Result>OK</Result>
</Response>
""")

CATALOG_NOTIFY = body("""
<Notify>
<CmdType>Catalog</CmdType>
<SN>4231</SN>
<DeviceID>34020000001180000001</DeviceID>
<SumNum>2</SumNum>
<DeviceList Num="2">
<Item>
<DeviceID>34020000001310000003</DeviceID>
<Event>OFF</Event>
</Item>
<Item>
<DeviceID>34020000001310000005</DeviceID>
<Event>ADD</Event>
<Name>Yard</Name>
<Manufacturer>Hikvision</Manufacturer>
<Model>DS-2CD1</Model>
<CivilCode>340200</CivilCode>
<Address>Yard</Address>
<Parental>0</Parental>
<ParentID>34020000001180000001</ParentID>
<RegisterWay>1</RegisterWay>
<Secrecy>0</Secrecy>
<Status>ON</Status>
</Item>
</DeviceList>
</Notify>
""")

ALARM_NOTIFY = body("""
<Notify>
<CmdType>Alarm</CmdType>
<SN>9</SN>
<DeviceID>34020000001310000001</DeviceID>
<AlarmPriority>1</AlarmPriority>
<AlarmMethod>5</AlarmMethod>
<AlarmTime>2024-05-20T07:38:35</AlarmTime>
<AlarmDescription>Motion</AlarmDescription>
<Longitude>117.2272</Longitude>
<Latitude>31.8206</Latitude>
<Info>
<AlarmType>2</AlarmType>
<AlarmTypeParam><EventType>1</EventType></AlarmTypeParam>
</Info>
</Notify>
""")

ALARM_RESPONSE = body("""
<Response>
<CmdType>Alarm</CmdType>
<SN>9</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
</Response>
""")

ALARM_SUBSCRIBE = body("""
<Query>
<CmdType>Alarm</CmdType>
<SN>4240</SN>
<DeviceID>34020000001180000001</DeviceID>
<StartAlarmPriority>0</StartAlarmPriority>
<EndAlarmPriority>0</EndAlarmPriority>
<AlarmMethod>0</AlarmMethod>
<StartAlarmTime>2024-05-20T00:00:00</StartAlarmTime>
<EndAlarmTime>2024-05-21T00:00:00</EndAlarmTime>
</Query>
""")

POSITION_SUBSCRIBE = body("""
<Query>
<CmdType>MobilePosition</CmdType>
<SN>4250</SN>
<DeviceID>34020000001320000007</DeviceID>
<Interval>5</Interval>
</Query>
""")

POSITION_2016 = body("""
<Notify>
<CmdType>MobilePosition</CmdType>
<SN>4251</SN>
<DeviceID>34020000001320000007</DeviceID>
<Time>2024-05-20T10:30:00</Time>
<Longitude>117.2272</Longitude>
<Latitude>31.8206</Latitude>
<Speed>32.5</Speed>
<Direction>90</Direction>
<Altitude>20</Altitude>
</Notify>
""")

POSITION_2022 = body("""
<Notify>
<CmdType>MobilePosition</CmdType>
<SN>4252</SN>
<DeviceID>34020000001320000007</DeviceID>
<Time>2024-05-20T10:30:05</Time>
<SumNum>1</SumNum>
<DeviceList Num="1">
<Item>
<DeviceID>34020000001320000007</DeviceID>
<CaptureTime>2024-05-20T10:30:04</CaptureTime>
<Longitude>117.2275</Longitude>
<Latitude>31.8207</Latitude>
<Speed>32.5</Speed>
<Direction>90</Direction>
<Altitude>20</Altitude>
<Height>3</Height>
</Item>
</DeviceList>
</Notify>
""")

HOME_POSITION_RESPONSE = body("""
<Response>
<CmdType>HomePositionQuery</CmdType>
<SN>8101</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
<HomePosition><Enabled>1</Enabled><ResetTime>60</ResetTime><PresetIndex>3</PresetIndex></HomePosition>
</Response>
""")

CRUISE_LIST_RESPONSE = body("""
<Response>
<CmdType>CruiseTrackListQuery</CmdType>
<SN>8102</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
<SumNum>2</SumNum>
<CruiseTrackList Num="2">
<CruiseTrack><Number>0</Number><Name>巡航一</Name></CruiseTrack>
<CruiseTrack><Number>1</Number><Name>Night</Name></CruiseTrack>
</CruiseTrackList>
</Response>
""")

CRUISE_QUERY = body("""
<Query>
<CmdType>CruiseTrackQuery</CmdType>
<SN>8103</SN>
<DeviceID>34020000001310000001</DeviceID>
<Number>0</Number>
</Query>
""")

CRUISE_RESPONSE = body("""
<Response>
<CmdType>CruiseTrackQuery</CmdType>
<SN>8103</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
<Number>0</Number>
<Name>巡航一</Name>
<SumNum>2</SumNum>
<CruisePointList Num="2">
<CruisePoint><PresetIndex>1</PresetIndex><StayTime>10</StayTime><Speed>5</Speed></CruisePoint>
<CruisePoint><PresetIndex>2</PresetIndex><StayTime>15</StayTime><Speed>15</Speed></CruisePoint>
</CruisePointList>
</Response>
""")

PTZ_POSITION_RESPONSE = body("""
<Response>
<CmdType>PTZPosition</CmdType>
<SN>8104</SN>
<DeviceID>34020000001310000001</DeviceID>
<Result>OK</Result>
<Pan>123.45</Pan>
<Tilt>-10.50</Tilt>
<Zoom>4.0</Zoom>
<HorizontalFieldAngle>60.25</HorizontalFieldAngle>
<VerticalFieldAngle>33.75</VerticalFieldAngle>
<MaxViewDistance>150</MaxViewDistance>
</Response>
""")

SD_CARD_RESPONSE = body("""
<Response>
<CmdType>SDCardStatus</CmdType>
<SN>8106</SN>
<DeviceID>34020000001320000001</DeviceID>
<Result>OK</Result>
<SumNum>1</SumNum>
<SDCardStatusInfo Num="1">
<Item>
<ID>1</ID>
<HddName>SD1</HddName>
<Status>formatting</Status>
<FormatProgress>42</FormatProgress>
<Capacity>61440</Capacity>
<FreeSpace>1024.5</FreeSpace>
</Item>
</SDCardStatusInfo>
</Response>
""")


M = TypeVar("M", bound=m.Message)


def decoded_as(data: bytes, cls: type[M]) -> M:
    result = decode(data)
    assert result.declared == "GB2312"
    assert result.repairs == ()
    assert isinstance(result.message, cls), type(result.message)
    return result.message


def test_catalog_query_and_subscribe_answer() -> None:
    query = decoded_as(CATALOG_QUERY, m.CatalogQuery)
    assert (query.sn, query.device_id, query.start_time, query.end_time) == (4226, NVR, None, None)
    ok = decoded_as(SUBSCRIBE_OK, m.CatalogResponse)
    assert (ok.sn, ok.result, ok.sum_num, ok.items) == (4230, "OK", None, ())


def test_catalog_response_2016_item() -> None:
    msg = decoded_as(CATALOG_RESPONSE_2016, m.CatalogResponse)
    assert msg.key == (NVR, "Catalog", 4226)
    assert msg.sum_num == 4
    assert len(msg.items) == 1
    item = msg.items[0]
    assert item == m.CatalogItem(
        device_id=CAM,
        name="Gate-North",
        manufacturer="Hikvision",
        model="DS-2CD2T47",
        owner="Owner",
        civil_code="340200",
        address="North gate",
        parental=0,
        parent_id=NVR,
        safety_way=0,
        register_way=1,
        secrecy=0,
        ip_address="192.168.1.64",
        port=8000,
        status="ON",
        longitude=117.2272,
        latitude=31.8206,
        info=m.CatalogInfo(ptz_type=1, download_speed="1/2/4/8"),
    )
    assert item.event is None
    assert item.parent_ids == (NVR,)


def test_catalog_response_2022_item() -> None:
    msg = decoded_as(CATALOG_RESPONSE_2022, m.CatalogResponse)
    item = msg.items[0]
    assert item.owner is None and item.safety_way is None
    assert item.info == m.CatalogInfo(
        ptz_type=1,
        stream_number_list="0/1",
        download_speed="1/2/4",
        grassroots_code="000000",
        point_type=2,
    )
    assert (item.port, item.status, item.register_way) == (8000, "ON", 1)


def test_keepalive_listing_faulty_devices() -> None:
    msg = decoded_as(KEEPALIVE_WITH_FAULTS, m.Keepalive)
    assert msg.status == "OK"
    assert msg.info == m.KeepaliveInfo(device_ids=("34020000001310000003",))


def test_device_info() -> None:
    msg = decoded_as(DEVICE_INFO, m.DeviceInfoResponse)
    assert msg == m.DeviceInfoResponse(
        sn=17430,
        device_id=NVR,
        device_name="NVR-01",
        result="OK",
        manufacturer="Hikvision",
        model="DS-7608N",
        firmware="V4.30.085",
        channel=8,
    )


def test_device_status_with_alarmstatus() -> None:
    msg = decoded_as(DEVICE_STATUS, m.DeviceStatusResponse)
    assert (msg.result, msg.online, msg.status, msg.encode, msg.record) == (
        "OK",
        "ONLINE",
        "OK",
        "ON",
        "OFF",
    )
    assert msg.device_time == "2024-05-20T10:20:01"
    assert msg.alarm_status == (
        m.AlarmStatusItem(device_id="34020000001340000001", duty_status="OFFDUTY"),
    )


def test_record_info_query_and_answers() -> None:
    query = decoded_as(RECORD_QUERY, m.RecordInfoQuery)
    assert (query.start_time, query.end_time, query.secrecy, query.type) == (
        "2024-05-20T00:00:00",
        "2024-05-20T23:59:59",
        0,
        "all",
    )
    answer = decoded_as(RECORD_RESPONSE, m.RecordInfoResponse)
    assert (answer.name, answer.sum_num, len(answer.items)) == ("Gate-North", 2, 2)
    first, second = answer.items
    assert (first.type, first.file_size, first.end_time) == (
        "time",
        524288000,
        "2024-05-20T08:59:59",
    )
    assert (second.type, second.file_size, second.start_time) == (
        "alarm",
        None,
        "2024-05-20T09:00:00",
    )
    none = decoded_as(RECORD_NONE, m.RecordInfoResponse)
    assert (none.sn, none.sum_num, none.items) == (5502, 0, ())


def test_config_download() -> None:
    query = decoded_as(CONFIG_QUERY, m.ConfigDownloadQuery)
    assert query.config_type == "BasicParam/VideoParamOpt"
    answer = decoded_as(CONFIG_RESPONSE, m.ConfigDownloadResponse)
    assert answer.result == "OK"
    assert answer.basic_param == m.BasicParam(
        name="IPC-01", expiration=3600, heart_beat_interval=60, heart_beat_count=3
    )
    assert answer.video_param_opt is None


def test_preset_query_response() -> None:
    msg = decoded_as(PRESET_RESPONSE, m.PresetQueryResponse)
    assert msg.sum_num == 2
    assert msg.items == (
        m.Preset(preset_id=1, preset_name="Gate"),
        m.Preset(preset_id=2, preset_name="Parking"),
    )


def test_ptz_control_and_wvp_info() -> None:
    msg = decoded_as(PTZ_CONTROL, m.DeviceControl)
    assert (msg.sn, msg.device_id, msg.ptz_cmd) == (9001, CAM, "A50F0101808000B6")
    assert msg.commands == ["PTZCmd"]
    assert not msg.expects_response
    wvp = decoded_as(PTZ_CONTROL_WVP, m.DeviceControl)
    assert wvp.ptz_cmd == "a50f0101808000b6"  # kept exactly as sent (forwarded unchanged)
    assert wvp.info is not None
    assert wvp.info.extra_text("ControlPriority") == "5"
    assert wvp.commands == ["PTZCmd"]


def test_record_command_and_its_answer() -> None:
    msg = decoded_as(RECORD_CMD, m.DeviceControl)
    assert msg.record_cmd == "Record"
    assert msg.expects_response
    answer = decoded_as(CONTROL_RESPONSE, m.DeviceControlResponse)
    assert answer.key == (CAM, "DeviceControl", 9002)
    assert answer.result == "OK"


@pytest.mark.parametrize(
    ("data", "expected", "commands"),
    [
        (TELEBOOT, {"tele_boot": "Boot"}, ["TeleBoot"]),
        (
            RECORD_STOP_2022,
            {"record_cmd": "StopRecord", "stream_number": 1},
            ["RecordCmd"],
        ),
        (GUARD, {"guard_cmd": "ResetGuard"}, ["GuardCmd"]),
        (
            ALARM_RESET,
            {"alarm_cmd": "ResetAlarm", "info": m.AlarmSelector(alarm_method="2", alarm_type="1")},
            ["AlarmCmd"],
        ),
        (IFAME, {"iframe_cmd": "Send"}, ["IFrameCmd"]),
        (
            DRAG_ZOOM_IN,
            {
                "drag_zoom_in": m.ZoomBox(
                    length=1920,
                    width=1080,
                    mid_point_x=960,
                    mid_point_y=540,
                    length_x=320,
                    length_y=180,
                )
            },
            ["DragZoomIn"],
        ),
        (
            DRAG_ZOOM_OUT,
            {
                "drag_zoom_out": m.ZoomBox(
                    length=1920,
                    width=1080,
                    mid_point_x=100,
                    mid_point_y=200,
                    length_x=640,
                    length_y=360,
                )
            },
            ["DragZoomOut"],
        ),
        (
            HOME_POSITION,
            {"home_position": m.HomePosition(enabled=1, reset_time=60, preset_index=1)},
            ["HomePosition"],
        ),
        (
            PTZ_PRESET_2022,
            {"ptz_cmd": "A50F018100010037", "ptz_cmd_params": m.PtzCmdParams(preset_name="Gate")},
            ["PTZCmd"],
        ),
        (
            PRECISE,
            {"ptz_precise_ctrl": m.PtzPrecise(pan=123.45, tilt=10.0, zoom=4.0)},
            ["PTZPreciseCtrl"],
        ),
        (FORMAT_SD, {"format_sd_card": 1}, ["FormatSDCard"]),
        (
            TARGET_TRACK,
            {
                "target_track": "Manual",
                "device_id2": "34020000001310000009",
                "target_area": m.ZoomBox(
                    length=1920,
                    width=1080,
                    mid_point_x=400,
                    mid_point_y=300,
                    length_x=200,
                    length_y=150,
                ),
            },
            ["TargetTrack"],
        ),
        (
            DEVICE_UPGRADE,
            {
                "device_upgrade": m.DeviceUpgrade(
                    firmware="V5.7.0",
                    file_url="http://192.168.1.10/fw/ipc.bin",
                    manufacturer="Hikvision",
                    session_id="7c2a0a6e-3b7b-4f29-9d6f-2f5e1b0c9a11",
                )
            },
            ["DeviceUpgrade"],
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_device_control_sub_commands(
    data: bytes, expected: dict[str, object], commands: list[str]
) -> None:
    msg = decoded_as(data, m.DeviceControl)
    assert msg == m.DeviceControl(sn=9010, device_id=CAM, **expected)  # type: ignore[arg-type]
    assert msg.commands == commands
    answered = {"RecordCmd", "GuardCmd", "AlarmCmd", "HomePosition", "DeviceUpgrade"}
    assert msg.expects_response == bool(answered & set(commands))


def test_device_config_and_answer() -> None:
    msg = decoded_as(DEVICE_CONFIG, m.DeviceConfig)
    assert msg.basic_param == m.BasicParam(
        name="IPC-01", expiration=3600, heart_beat_interval=30, heart_beat_count=3
    )
    assert msg.svac_encode_config is None
    answer = decoded_as(DEVICE_CONFIG_RESPONSE, m.DeviceConfigResponse)
    assert (answer.sn, answer.device_id, answer.result) == (7002, IPC, "OK")


def test_device_config_blocks_are_read_as_trees() -> None:
    msg = SAMPLES[m.DeviceConfig]
    decoded = decoded_as(encode(msg), m.DeviceConfig)
    plan = decoded.video_record_plan
    assert plan is not None
    assert plan.get("recordenable") == "1"
    schedule = plan.find("RecordSchedule")
    assert schedule is not None
    segments = [c for c in schedule.children if c.tag == "TimeSegment"]
    assert len(segments) == 2
    assert segments[1].get("StopHour") == "18"
    mask = decoded.picture_mask
    assert mask is not None
    region = mask.find("RegionList")
    assert region is not None
    assert dict(region.attrib) == {"Num": "2"}
    assert isinstance(decoded.frame_mirror, Block)
    assert decoded.frame_mirror.text == "1"


def test_catalog_notify() -> None:
    msg = decoded_as(CATALOG_NOTIFY, m.CatalogNotify)
    assert msg.sum_num == 2
    off, add = msg.items
    assert off == m.CatalogItem(device_id="34020000001310000003", event="OFF")
    assert add.event == "ADD"
    assert (add.device_id, add.name, add.status, add.parent_id) == (
        "34020000001310000005",
        "Yard",
        "ON",
        NVR,
    )


def test_alarm_notify_answer_and_subscription() -> None:
    msg = decoded_as(ALARM_NOTIFY, m.AlarmNotify)
    assert (msg.alarm_priority, msg.alarm_method, msg.alarm_time) == (1, 5, "2024-05-20T07:38:35")
    assert msg.alarm_description == "Motion"
    assert (msg.longitude, msg.latitude) == (117.2272, 31.8206)
    assert msg.info == m.AlarmInfo(alarm_type=2, alarm_type_param=m.AlarmTypeParam(event_type=1))
    answer = decoded_as(ALARM_RESPONSE, m.AlarmResponse)
    assert answer.key == (CAM, "Alarm", 9)
    assert answer.result == "OK"
    sub = decoded_as(ALARM_SUBSCRIBE, m.AlarmQuery)
    assert sub == m.AlarmQuery(
        sn=4240,
        device_id=NVR,
        start_alarm_priority=0,
        end_alarm_priority=0,
        alarm_method="0",
        start_alarm_time="2024-05-20T00:00:00",
        end_alarm_time="2024-05-21T00:00:00",
    )


def test_mobile_position_both_forms() -> None:
    sub = decoded_as(POSITION_SUBSCRIBE, m.MobilePositionQuery)
    assert sub.interval == 5
    flat = decoded_as(POSITION_2016, m.MobilePositionNotify)
    assert (flat.time, flat.speed, flat.direction, flat.altitude) == (
        "2024-05-20T10:30:00",
        32.5,
        90.0,
        20.0,
    )
    assert flat.items == ()
    assert flat.positions() == [
        m.PositionItem(
            device_id="34020000001320000007",
            capture_time="2024-05-20T10:30:00",
            longitude=117.2272,
            latitude=31.8206,
            speed=32.5,
            direction=90.0,
            altitude=20.0,
        )
    ]
    listed = decoded_as(POSITION_2022, m.MobilePositionNotify)
    assert listed.longitude is None
    assert listed.sum_num == 1
    assert listed.positions() == [
        m.PositionItem(
            device_id="34020000001320000007",
            capture_time="2024-05-20T10:30:04",
            longitude=117.2275,
            latitude=31.8207,
            speed=32.5,
            direction=90.0,
            altitude=20.0,
            height=3.0,
        )
    ]


def test_2022_queries() -> None:
    home = decoded_as(HOME_POSITION_RESPONSE, m.HomePositionResponse)
    assert home.home_position == m.HomePosition(enabled=1, reset_time=60, preset_index=3)
    tracks = decoded_as(CRUISE_LIST_RESPONSE, m.CruiseTrackListResponse)
    assert tracks.sum_num == 2
    assert tracks.items == (
        m.CruiseTrack(number=0, name="巡航一"),
        m.CruiseTrack(number=1, name="Night"),
    )
    query = decoded_as(CRUISE_QUERY, m.CruiseTrackQuery)
    assert query.number == 0
    track = decoded_as(CRUISE_RESPONSE, m.CruiseTrackResponse)
    assert (track.number, track.name, track.sum_num) == (0, "巡航一", 2)
    assert track.items[1] == m.CruisePoint(preset_index=2, stay_time=15, speed=15)
    pos = decoded_as(PTZ_POSITION_RESPONSE, m.PtzPositionResponse)
    assert (pos.pan, pos.tilt, pos.zoom) == (123.45, -10.5, 4.0)
    assert (pos.horizontal_field_angle, pos.vertical_field_angle, pos.max_view_distance) == (
        60.25,
        33.75,
        150.0,
    )
    sd = decoded_as(SD_CARD_RESPONSE, m.SDCardStatusResponse)
    assert sd.items == (
        m.SDCard(
            id=1,
            hdd_name="SD1",
            status="formatting",
            format_progress=42,
            capacity=61440.0,
            free_space=1024.5,
        ),
    )
    for cmd, cls in [
        ("HomePositionQuery", m.HomePositionQuery),
        ("CruiseTrackListQuery", m.CruiseTrackListQuery),
        ("PTZPosition", m.PtzPositionQuery),
        ("SDCardStatus", m.SDCardStatusQuery),
    ]:
        data = body(
            f"<Query>\n<CmdType>{cmd}</CmdType>\n<SN>8200</SN>\n<DeviceID>{CAM}</DeviceID>\n"
            "</Query>"
        )
        assert decoded_as(data, cls) == cls(sn=8200, device_id=CAM)


def test_broadcast_uses_source_and_target() -> None:
    data = body(
        "<Notify>\n<CmdType>Broadcast</CmdType>\n<SN>995</SN>\n"
        "<SourceID>34020000002000000001</SourceID>\n<TargetID>34020000001370000001</TargetID>\n"
        "</Notify>"
    )
    msg = decoded_as(data, m.BroadcastNotify)
    assert (msg.source_id, msg.target_id) == ("34020000002000000001", "34020000001370000001")
    assert msg.device_id is None  # Broadcast has no DeviceID (reference §3.1)
    out = encode(msg)
    assert b"DeviceID" not in out
    assert decode(out).message == msg
