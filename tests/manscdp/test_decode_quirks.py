"""Decoding what devices really send (reference §3.1, §8.3, §10): vendor quirks are read into the
right fields, each repair is reported, and hostile or broken bodies are refused with a reason."""

from __future__ import annotations

import pytest
from lxml import etree

from gateway.manscdp import Block, DecodeError, UnknownCommand, decode, encode, xmlio
from gateway.manscdp import messages as m
from tests.manscdp.samples import CAM, NVR

GB_PROLOG = '<?xml version="1.0" encoding="GB2312"?>\r\n'


def catalog(item_xml: str, prolog: str = GB_PROLOG) -> str:
    return (
        f"{prolog}<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>17</SN>\r\n"
        f'<DeviceID>{NVR}</DeviceID>\r\n<SumNum>1</SumNum>\r\n<DeviceList Num="1">\r\n'
        f"<Item>\r\n<DeviceID>{CAM}</DeviceID>\r\n{item_xml}\r\n</Item>\r\n</DeviceList>\r\n"
        "</Response>\r\n"
    )


def only_item(data: bytes) -> tuple[m.CatalogItem, m.Decoded]:
    decoded = decode(data)
    assert isinstance(decoded.message, m.CatalogResponse)
    assert len(decoded.message.items) == 1
    return decoded.message.items[0], decoded


# -- lenient reading -------------------------------------------------------------------------


def test_element_names_in_any_case() -> None:
    data = (
        '<?xml version="1.0"?><RESPONSE><cmdtype>catalog</cmdtype><sn>5</sn>'
        f'<deviceid>{NVR}</deviceid><devicelist num="1"><ITEM><DEVICEID>{CAM}</DEVICEID>'
        "<SECRECY>1</SECRECY><name>Gate</name><ipaddress>10.0.0.2</ipaddress>"
        "<INFO><ptztype>3</ptztype></INFO></ITEM></devicelist></RESPONSE>"
    ).encode()
    msg = decode(data).message
    assert isinstance(msg, m.CatalogResponse)
    assert (msg.sn, msg.device_id) == (5, NVR)
    assert msg.items == (
        m.CatalogItem(
            device_id=CAM,
            secrecy=1,
            name="Gate",
            ip_address="10.0.0.2",
            info=m.CatalogInfo(ptz_type=3),
        ),
    )


def test_elements_in_any_order() -> None:
    data = (
        f'<Response><DeviceList Num="1"><Item><Status>OFF</Status><Name>B</Name>'
        f"<DeviceID>{CAM}</DeviceID></Item></DeviceList><SumNum>1</SumNum>"
        f"<DeviceID>{NVR}</DeviceID><SN>99</SN><CmdType>Catalog</CmdType></Response>"
    ).encode()
    msg = decode(data).message
    assert isinstance(msg, m.CatalogResponse)
    assert (msg.sn, msg.device_id, msg.sum_num) == (99, NVR, 1)
    assert msg.items == (m.CatalogItem(device_id=CAM, status="OFF", name="B"),)
    assert msg.extra == ()


def test_whitespace_around_values_is_trimmed() -> None:
    item, _ = only_item(
        catalog(
            "<Secrecy> 0 </Secrecy><Port>\t8000\r\n</Port><Name>  北门  </Name>"
            "<Longitude> 117.2272 </Longitude><Status> on </Status>"
        ).encode("gb18030")
    )
    assert (item.secrecy, item.port, item.name, item.longitude, item.status) == (
        0,
        8000,
        "北门",
        117.2272,
        "ON",
    )
    whole = decode(
        f"<Query>\n <CmdType> Catalog </CmdType>\n <SN> 42 </SN>\n"
        f" <DeviceID>\n{NVR}\n</DeviceID></Query>".encode()
    ).message
    assert (type(whole), whole.sn, whole.device_id) == (m.CatalogQuery, 42, NVR)


def test_empty_elements_read_as_absent() -> None:
    data = (
        f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
        "<StartTime></StartTime><EndTime/></Query>"
    ).encode()
    msg = decode(data).message
    assert isinstance(msg, m.CatalogQuery)
    assert (msg.start_time, msg.end_time) == (None, None)
    item, decoded = only_item(catalog("<Name> </Name><Port></Port><Parental/>").encode())
    assert (item.name, item.port, item.parental) == (None, None, None)
    assert decoded.repairs == ()


@pytest.mark.parametrize("tag", ["IFameCmd", "IFrameCmd", "iframecmd", "IFAMECMD"])
def test_both_iframe_spellings(tag: str) -> None:
    data = (
        f"<Control><CmdType>DeviceControl</CmdType><SN>3</SN><DeviceID>{CAM}</DeviceID>"
        f"<{tag}>Send</{tag}></Control>"
    ).encode()
    msg = decode(data).message
    assert isinstance(msg, m.DeviceControl)
    assert msg.iframe_cmd == "Send"
    assert msg.extra == ()
    assert msg.commands == ["IFrameCmd"]


@pytest.mark.parametrize("tag", ["Alarmstatus", "AlarmStatus", "ALARMSTATUS"])
def test_alarm_status_spellings(tag: str) -> None:
    data = (
        f"<Response><CmdType>DeviceStatus</CmdType><SN>4</SN><DeviceID>{CAM}</DeviceID>"
        f'<Result>OK</Result><{tag} Num="2"><Item><DeviceID>34020000001340000001</DeviceID>'
        "<DutyStatus>onduty</DutyStatus></Item><item><DeviceID>34020000001340000002</DeviceID>"
        f"<DutyStatus>ALARM</DutyStatus></item></{tag}></Response>"
    ).encode()
    msg = decode(data).message
    assert isinstance(msg, m.DeviceStatusResponse)
    assert msg.alarm_status == (
        m.AlarmStatusItem(device_id="34020000001340000001", duty_status="ONDUTY"),
        m.AlarmStatusItem(device_id="34020000001340000002", duty_status="ALARM"),
    )


def test_preset_response_without_sum_num() -> None:
    data = (
        f"<Response><CmdType>PresetQuery</CmdType><SN>8</SN><DeviceID>{CAM}</DeviceID>"
        '<PresetList Num="1"><Item><PresetID>3</PresetID><PresetName>门口</PresetName></Item>'
        "</PresetList></Response>"
    ).encode("gb18030")
    msg = decode(data).message
    assert isinstance(msg, m.PresetQueryResponse)
    assert msg.sum_num is None
    assert msg.items == (m.Preset(preset_id=3, preset_name="门口"),)


def test_unknown_elements_kept_in_extra_and_written_back() -> None:
    item, decoded = only_item(
        catalog('<StreamNum>2</StreamNum><Name>A</Name><Vendor k="v"><Z>1</Z></Vendor>').encode()
    )
    assert decoded.repairs == ()
    assert [tag for tag, _ in item.extra] == ["StreamNum", "Vendor"]
    assert item.extra_text("StreamNum") == "2"
    assert item.name == "A"
    out = encode(decoded.message)
    assert b"<StreamNum>2</StreamNum>" in out
    assert b'<Vendor k="v">' in out and b"<Z>1</Z>" in out
    assert decode(out).message == decoded.message


def test_unknown_top_level_element_written_after_the_known_ones() -> None:
    data = (
        f"<Notify><CmdType>Keepalive</CmdType><X-Vendor>1</X-Vendor><SN>1</SN>"
        f"<DeviceID>{CAM}</DeviceID><Status>OK</Status></Notify>"
    ).encode()
    msg = decode(data).message
    assert msg.extra == (("X-Vendor", "<X-Vendor>1</X-Vendor>"),)
    out = encode(msg)
    assert out.index(b"<Status>") < out.index(b"<X-Vendor>1</X-Vendor>")


def test_value_of_the_wrong_type_is_kept_and_reported() -> None:
    item, decoded = only_item(catalog("<Port>-</Port><Longitude>east</Longitude>").encode())
    assert (item.port, item.longitude) == (None, None)
    assert dict(item.extra) == {
        "Port": "<Port>-</Port>",
        "Longitude": "<Longitude>east</Longitude>",
    }
    assert len(decoded.repairs) == 2
    assert all("not a number" in r for r in decoded.repairs)


def test_bare_ampersand_in_name_is_repaired() -> None:
    item, decoded = only_item(catalog("<Name>A&B 门 & Co &amp; &#x41;</Name>").encode("gb18030"))
    assert item.name == "A&B 门 & Co & A"
    assert any("&" in r for r in decoded.repairs)


def test_nul_bytes_are_removed() -> None:
    data = catalog("<Name>Gate\x00</Name>").encode() + b"\x00\x00"
    item, decoded = only_item(data)
    assert item.name == "Gate"
    assert any("NUL" in r for r in decoded.repairs)


# Issue 13 item 7: what XML 1.0 forbids (C0 controls, U+FFFE/U+FFFF, surrogates) and the C1
# controls it discourages (U+009B is a terminal's CSI) are removed where a device sends them,
# raw or as character references, with one repair; the message is kept.
CONTROLS_IN_NAME = [
    "Gate\x01\x1b[31m\u009b2J北门",
    "Gate&#1;&#x1b;[31m&#155;2J北门",
    "Gate&#x9B;&#xFFFE;&#xffff;&#xD800;&#1114112;[31m2J北门",
    # C1 controls only: XML 1.0 allows them, lxml takes them, each value is cleaned.
    "Gate\u009b[31m\u0085\u009f2J北门",
    "Gate&#155;[31m&#x85;2J北门",
]


@pytest.mark.parametrize("name", CONTROLS_IN_NAME)
@pytest.mark.parametrize("codec", ["gb18030", "utf-8"])
def test_control_characters_from_a_device_are_removed(name: str, codec: str) -> None:
    item, decoded = only_item(catalog(f"<Name>{name}</Name><Address>合肥</Address>").encode(codec))
    assert item.name == "Gate[31m2J北门"
    assert any("control characters" in r for r in decoded.repairs)


@pytest.mark.parametrize(
    "xml",
    [
        '<X-Vendor k="a\x1bb">c\x9bd&#7;<Y>e\x9b</Y></X-Vendor>',
        '<X-Vendor k="a\x9bb">c\x9bd<Y>e\x9b</Y></X-Vendor>',
    ],
)
def test_control_characters_in_attributes_and_unknown_elements_are_removed(xml: str) -> None:
    item, decoded = only_item(catalog(xml).encode("gb18030"))
    clean, _ = only_item(catalog('<X-Vendor k="ab">cd<Y>e</Y></X-Vendor>').encode("gb18030"))
    assert item.extra == clean.extra and "\x9b" not in item.extra[0][1]
    assert decoded.repairs == ("control characters removed",)


def test_control_characters_in_a_configuration_block_are_removed() -> None:
    data = (
        '<?xml version="1.0"?><Response><CmdType>ConfigDownload</CmdType><SN>3</SN>'
        f'<DeviceID>{NVR}</DeviceID><Result>OK</Result><SnapShot k="a\u009bb">'
        "<SnapNum>3\u009b</SnapNum></SnapShot></Response>"
    ).encode("gb18030")
    decoded = decode(data)
    msg = decoded.message
    assert isinstance(msg, m.ConfigDownloadResponse) and msg.snap_shot is not None
    assert msg.snap_shot.attrib == (("k", "ab"),) and msg.snap_shot.get("SnapNum") == "3"
    assert decoded.repairs == ("control characters removed",)


def test_text_without_control_characters_is_left_alone() -> None:
    name = "Gate\t北门 &#x41; \u2028 \U0002a6a5 \ue000"
    item, decoded = only_item(catalog(f"<Name>{name}</Name>").encode("gb18030"))
    assert item.name == "Gate\t北门 A \u2028 \U0002a6a5 \ue000"
    assert decoded.repairs == ()


@pytest.mark.parametrize("charset", ["GB2312", "UTF-8"])
def test_a_stored_value_with_control_characters_still_encodes_to_well_formed_xml(
    charset: str,
) -> None:
    """Belt and braces: a value that never went through the decoder (an older database) is
    written without the characters that would break the document, in text, a list of texts,
    a generic block's text and attributes, and a kept unknown element."""
    raw = "Gate\x01\x1b[31m\u009b\ufffe\uffff\ud800北门"
    item = m.CatalogItem(
        device_id=CAM,
        name=raw,
        address=raw,
        extra=(("X-Vendor", "<X-Vendor>a\x9bb</X-Vendor>"),),
    )
    msg = m.CatalogResponse(
        sn=1, device_id=NVR, sum_num=1, items=(item,), extra_info=(raw, "plain")
    )
    data = encode(msg, charset)
    strict = etree.XMLParser(recover=False, resolve_entities=False)
    root = etree.fromstring(data, strict)  # raises unless well-formed
    assert root.findtext("DeviceList/Item/Name") == "Gate[31m北门"
    assert [e.text for e in root.findall("ExtraInfo")] == ["Gate[31m北门", "plain"]
    assert root.findtext("DeviceList/Item/X-Vendor") == "ab"
    block = Block("SnapShot", raw, attrib=(("k", raw),))
    config = m.ConfigDownloadResponse(sn=1, device_id=NVR, result="OK", snap_shot=block)
    again = etree.fromstring(encode(config, charset), strict)
    assert again.findtext("SnapShot") == "Gate[31m北门"
    assert again.find("SnapShot").get("k") == "Gate[31m北门"


def test_junk_after_the_root_is_dropped() -> None:
    data = catalog("<Name>Gate</Name>").encode() + b"\r\n\xff\xfegarbage<"
    item, decoded = only_item(data)
    assert item.name == "Gate"
    assert any("junk" in r for r in decoded.repairs)


def test_gb2312_prolog_with_utf8_bytes() -> None:
    item, decoded = only_item(catalog("<Name>北门一号</Name><Address>合肥</Address>").encode())
    assert (item.name, item.address) == ("北门一号", "合肥")
    assert decoded.charset == "UTF-8"
    assert decoded.declared == "GB2312"


@pytest.mark.parametrize("name", ["堃", "镕", "朱镕基 堃 Gate"])
def test_gb2312_prolog_with_gbk_only_characters(name: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        name.encode("gb2312")
    item, decoded = only_item(catalog(f"<Name>{name}</Name>").encode("gbk"))
    assert item.name == name
    assert decoded.charset == "GB18030"
    assert decoded.declared == "GB2312"


def test_utf8_declared_with_gbk_bytes_the_bytes_win() -> None:
    prolog = '<?xml version="1.0" encoding="UTF-8"?>\n'
    item, decoded = only_item(catalog("<Name>北门一号</Name>", prolog).encode("gbk"))
    assert item.name == "北门一号"
    assert decoded.charset == "GB18030"
    assert decoded.declared == "UTF-8"


def test_bytes_valid_in_both_charsets_follow_the_declaration() -> None:
    gb = catalog("<Name>一专业</Name>").encode("gb2312")
    assert gb.decode("utf-8")  # also valid UTF-8
    item, decoded = only_item(gb)
    assert (item.name, decoded.charset) == ("一专业", "GB18030")
    utf8 = catalog("<Name>Café Δ</Name>", '<?xml version="1.0" encoding="UTF-8"?>\n').encode()
    item, decoded = only_item(utf8)
    assert (item.name, decoded.charset) == ("Café Δ", "UTF-8")


@pytest.mark.parametrize(
    ("prolog", "declared"),
    [
        ("<?xml version='1.0' encoding='GB2312'?>\n", "GB2312"),
        ('<?xml version="1.0" encoding="gb2312" standalone="yes"?>\n', "GB2312"),
        ("<?xml version = \"1.0\" encoding = 'GBK' ?>", "GBK"),
        ('<?xml version="1.0"?>\n', None),
        ("", None),
        ("\r\n  \r\n", None),
    ],
    ids=["single-quotes", "standalone", "spaces", "no-encoding", "no-prolog", "blank-lines"],
)
def test_prolog_variants(prolog: str, declared: str | None) -> None:
    item, decoded = only_item(catalog("<Name>北门</Name>", prolog).encode("gb18030"))
    assert item.name == "北门"
    assert decoded.declared == declared
    assert decoded.charset == "GB18030"
    assert decoded.repairs == ()


def test_declared_comes_from_the_prolog_only() -> None:
    data = f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
    data += "<StartTime>encoding='UTF-8'</StartTime></Query>"
    decoded = decode(data.encode())
    assert isinstance(decoded.message, m.CatalogQuery)
    assert decoded.message.start_time == "encoding='UTF-8'"
    assert decoded.declared is None


@pytest.mark.parametrize("prolog", [GB_PROLOG, ""], ids=["prolog", "no-prolog"])
def test_utf8_bom(prolog: str) -> None:
    data = b"\xef\xbb\xbf" + catalog("<Name>北门</Name>", prolog).encode()
    item, decoded = only_item(data)
    assert item.name == "北门"
    assert decoded.charset == "UTF-8"


def test_pure_ascii_reports_no_charset() -> None:
    decoded = decode(catalog("<Name>Gate</Name>").encode())
    assert decoded.charset is None
    assert decoded.declared == "GB2312"


def test_comments_and_processing_instructions_are_ignored() -> None:
    data = catalog("<!-- vendor --><?pi x?><Name><![CDATA[A<B]]></Name>").encode()
    item, decoded = only_item(data)
    assert item.name == "A<B"
    assert item.extra == ()
    assert decoded.repairs == ()


# -- refusals ----------------------------------------------------------------------------------

VALID = encode(m.CatalogQuery(sn=4226, device_id=NVR, start_time="2024-05-01T00:00:00"), "GB2312")


def refused(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(data)
    reason = info.value.reason
    assert reason == str(info.value)
    assert reason and not reason.startswith("cannot decode"), reason
    return reason


XXE = (
    '<?xml version="1.0" encoding="GB2312"?>\n'
    '<!DOCTYPE Query [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
    "<StartTime>&xxe;</StartTime></Query>"
)
XXE_EXTERNAL_DTD = (
    '<?xml version="1.0"?>\n<!DOCTYPE Query SYSTEM "file:///etc/passwd">\n'
    f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID></Query>"
)
PARAMETER_ENTITY = (
    '<?xml version="1.0"?>\n<!doctype Query [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x"> %p;]>'
    f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID></Query>"
)
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
        for i in range(1, 10)
    )
    + "]>\n"
    f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
    "<StartTime>&lol9;</StartTime></Query>"
)


@pytest.mark.parametrize(
    "xml",
    [XXE, XXE_EXTERNAL_DTD, PARAMETER_ENTITY, BILLION_LAUGHS],
    ids=["xxe", "external-dtd", "parameter-entity", "billion-laughs"],
)
def test_dtds_are_refused(xml: str) -> None:
    assert "DTD" in refused(xml.encode())


def test_undeclared_entity_is_refused_not_expanded() -> None:
    data = (
        f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
        "<StartTime>&xxe;</StartTime></Query>"
    ).encode()
    assert "well-formed" in refused(data)


def test_xinclude_is_not_processed() -> None:
    data = (
        f'<Query xmlns:xi="http://www.w3.org/2001/XInclude"><CmdType>Catalog</CmdType><SN>1</SN>'
        f'<DeviceID>{NVR}</DeviceID><xi:include href="file:///etc/passwd" parse="text"/></Query>'
    ).encode()
    msg = decode(data).message
    assert "root:" not in repr(msg)
    assert len(msg.extra) == 1


def nested(depth: int) -> bytes:
    return (
        f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID>"
        + "<a>" * depth
        + "x"
        + "</a>" * depth
        + "</Query>"
    ).encode()


@pytest.mark.parametrize("depth", [40, 300, 10_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    assert refused(nested(depth)) == f"elements nested deeper than {xmlio.MAX_DEPTH}"


def test_nesting_within_the_limit_is_read() -> None:
    msg = decode(nested(xmlio.MAX_DEPTH - 2)).message
    assert len(msg.extra) == 1


def test_missing_sn() -> None:
    data = f"<Query><CmdType>Catalog</CmdType><DeviceID>{NVR}</DeviceID></Query>".encode()
    assert refused(data) == "missing <SN> in <Query>"
    empty = f"<Query><CmdType>Catalog</CmdType><SN> </SN><DeviceID>{NVR}</DeviceID></Query>"
    assert refused(empty.encode()) == "missing <SN> in <Query>"


@pytest.mark.parametrize("value", ["abc", "12a", "1.5", "０１", "99999999999999999999"])
def test_non_numeric_sn(value: str) -> None:
    data = f"<Query><CmdType>Catalog</CmdType><SN>{value}</SN><DeviceID>{NVR}</DeviceID></Query>"
    reason = refused(data.encode())
    assert "<SN>" in reason and "not a number" in reason


def test_negative_sn() -> None:
    data = f"<Query><CmdType>Catalog</CmdType><SN>-3</SN><DeviceID>{NVR}</DeviceID></Query>"
    assert "SN" in refused(data.encode())


@pytest.mark.parametrize(
    "device_id", ["", "<DeviceID></DeviceID>", "<DeviceID/>", "<DeviceID>  </DeviceID>"]
)
def test_missing_device_id(device_id: str) -> None:
    data = f"<Query><CmdType>Catalog</CmdType><SN>1</SN>{device_id}</Query>".encode()
    assert refused(data) == "missing <DeviceID> in <Query>"


def test_catalog_item_without_device_id() -> None:
    reason = refused(catalog("<Name>A</Name>").replace(f"<DeviceID>{CAM}</DeviceID>", "").encode())
    assert reason == "missing <DeviceID> in <Item>"


def test_broadcast_without_source_id() -> None:
    data = "<Notify><CmdType>Broadcast</CmdType><SN>1</SN><TargetID>1</TargetID></Notify>"
    assert refused(data.encode()) == "missing <SourceID> in <Notify>"


@pytest.mark.parametrize("cmd", ["", "<CmdType></CmdType>", "<CmdType> </CmdType>"])
def test_no_cmd_type(cmd: str) -> None:
    data = f"<Query>{cmd}<SN>1</SN><DeviceID>{NVR}</DeviceID></Query>".encode()
    assert refused(data) == "<Query> has no CmdType"


@pytest.mark.parametrize(
    ("root", "cmd"),
    [("Query", "Reboot"), ("Notify", "DeviceInfo"), ("Request", "Catalog"), ("Query", "Keepalive")],
)
def test_unknown_command(root: str, cmd: str) -> None:
    data = f"<{root}><CmdType>{cmd}</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID></{root}>"
    with pytest.raises(UnknownCommand) as info:
        decode(data.encode())
    assert (info.value.root, info.value.cmd_type) == (root, cmd)
    assert info.value.reason == f"unknown command {root}/{cmd}"


@pytest.mark.parametrize(
    "data",
    [b"", b"   \r\n", b"\x00\x00", b"\xef\xbb\xbf", b'<?xml version="1.0" encoding="GB2312"?>\r\n'],
    ids=["empty", "blank", "nul", "bom", "prolog-only"],
)
def test_empty_body(data: bytes) -> None:
    assert refused(data) == "empty body"


@pytest.mark.parametrize("cut", [len(VALID) // 2, len(VALID) - 12, 60])
def test_truncated_xml(cut: int) -> None:
    assert "well-formed" in refused(VALID[:cut])


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\n",
        b'{"CmdType": "Catalog"}',
        b"<Query><CmdType>Catalog</CmdType><SN>1</SN></Qeury>",
        b"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID></Query><Query>"
        b"<CmdType>Catalog</CmdType><SN>2</SN><DeviceID>2</DeviceID></Query>",
    ],
    ids=["sip", "json", "mismatched", "two-roots"],
)
def test_not_xml(data: bytes) -> None:
    refused(data)


@pytest.mark.parametrize(
    "prolog",
    [
        '<?xml version="1.0" encoding="GB2312">',
        '<?xml version="1.0" encoding="GB2312"',
        "<?xml",
    ],
)
def test_broken_prolog(prolog: str) -> None:
    reason = refused(
        (
            prolog
            + f"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>{NVR}</DeviceID></Query>"
        ).encode()
    )
    assert "declaration" in reason or "well-formed" in reason


def test_body_over_the_size_limit() -> None:
    pad = b" " * (xmlio.MAX_BODY + 1 - len(VALID))
    data = VALID.replace(b"</Query>", pad + b"</Query>")
    assert len(data) == xmlio.MAX_BODY + 1
    assert refused(data) == f"body of {xmlio.MAX_BODY + 1} bytes exceeds {xmlio.MAX_BODY}"
    just_fits = VALID.replace(b"</Query>", pad[1:] + b"</Query>")
    assert isinstance(decode(just_fits).message, m.CatalogQuery)


def test_a_second_list_element_adds_its_items() -> None:
    """Two <DeviceList> in one answer: both lists' items are kept, and the message encodes
    and decodes back to itself (hypothesis found ``<DeviceList/><DeviceList/>`` did not)."""
    from gateway.manscdp import decode, encode

    body = (
        b'<?xml version="1.0" encoding="GB2312"?><Response><CmdType>Catalog</CmdType><SN>1</SN>'
        b"<DeviceID>34020000001320000001</DeviceID><SumNum>2</SumNum>"
        b'<DeviceList Num="1"><Item><DeviceID>34020000001320000002</DeviceID></Item></DeviceList>'
        b'<DeviceList Num="1"><Item><DeviceID>34020000001320000003</DeviceID></Item></DeviceList>'
        b"</Response>"
    )
    decoded = decode(body)
    ids = [item.device_id for item in decoded.message.items]
    assert ids == ["34020000001320000002", "34020000001320000003"]
    assert any("merged" in r for r in decoded.repairs)
    empty = body.replace(b"<Item><DeviceID>34020000001320000002</DeviceID></Item>", b"")
    msg = decode(empty).message
    assert decode(encode(msg, "GB2312")).message == msg


def test_a_decoder_bug_is_a_decode_error_for_the_peer_and_an_error_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad input must only ever raise DecodeError; anything else is our bug. The peer is
    answered as for a bad body, and the bug is logged at error level with its traceback."""
    import gateway.manscdp.messages as messages_module

    lines: list[tuple[str, str, dict[str, object]]] = []

    class Recorder:
        def __getattr__(self, level: str) -> object:
            return lambda event, **fields: lines.append((level, event, fields))

    def broken(data: bytes) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(messages_module, "log", Recorder())
    monkeypatch.setattr(messages_module, "_decode", broken)
    with pytest.raises(DecodeError, match="cannot decode: KeyError"):
        messages_module.decode(b"<Notify/>")
    assert [(level, event) for level, event, _ in lines] == [("error", "manscdp.decoder_bug")]
    assert isinstance(lines[0][2]["exc_info"], KeyError)
