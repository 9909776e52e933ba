"""Who hears of what, what each NOTIFY carries, and subscription expiry: plain calls with a fake
clock, no loop, no sockets (GB/T 28181-2022 §9.11, Annex N; RFC 6665 §4.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.catalog import Catalog
from gateway.events import CatalogChange, EventBus, MobilePositionReceived
from gateway.manscdp import (
    AlarmQuery,
    CatalogInfo,
    CatalogItem,
    CatalogQuery,
    Message,
    MobilePositionQuery,
    PositionItem,
)
from gateway.metrics import Metrics
from gateway.model import Alarm, Device
from gateway.settings import Config, UpperPlatform, config_from_dict
from gateway.sip import Peer, build_request
from gateway.store import MemoryStore
from gateway.uplink import IdMap, SharedView
from gateway.uplink.planning import NotifyPlanner
from gateway.uplink.subscriptions import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    InboundSubscription,
    granted_expires,
)

GW = "34020000002000000001"
DOMAIN = "3402000000"
UP = "34010000002000000001"
NVR1, NVR2 = "34020000001180000001", "34020000001180000002"
GROUP, ORG = "34020000002150000001", "34020000002160000001"
CAM1, CAM2 = "3402000000131001" + "0001", "3402000000131001" + "0002"
CAM3 = "3402000000131002" + "0001"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cam(device_id: str, parent: str, **kw: object) -> CatalogItem:
    fields: dict[str, object] = {"device_id": device_id, "name": "通道", "parent_id": parent}
    fields.update({"civil_code": "340200", "status": "ON"})
    fields.update(kw)
    return CatalogItem(**fields)  # type: ignore[arg-type]


def world() -> tuple[Config, Catalog, dict[str, Device]]:
    """NVR1 reports a business group, a virtual organisation under it and two cameras (the
    second under the organisation); NVR2 one camera; neither lists itself."""
    config = config_from_dict({"gateway": {"id": GW, "domain": DOMAIN, "civil_code": "340200"}})
    catalog = Catalog(store=MemoryStore(), events=EventBus(), metrics=Metrics(), gateway_id=GW)
    group = CatalogItem(device_id=GROUP, name="交通", parent_id=NVR1)
    org = CatalogItem(device_id=ORG, name="路口", info=CatalogInfo(business_group_id=GROUP))
    catalog.apply_sync(
        NVR1, [group, org, cam(CAM1, NVR1), cam(CAM2, f"{NVR1}/{ORG}")], partial=False
    )
    catalog.apply_sync(NVR2, [cam(CAM3, NVR2)], partial=False)
    devices = {NVR1: Device(NVR1, online=True), NVR2: Device(NVR2, online=True)}
    return config, catalog, devices


@dataclass
class Upper:
    """An upper as the planner sees it (the Audience shape)."""

    name: str
    view: SharedView
    idmap: IdMap
    subs: Mapping[str, InboundSubscription] = field(default_factory=dict)
    online: bool = True


def subscription(
    kind: str, target: str, now: float = 1000.0, granted: int = 600
) -> InboundSubscription:
    query: Message
    if kind == "Catalog":
        query = CatalogQuery(sn=1, device_id=target)
    elif kind == "Alarm":
        query = AlarmQuery(sn=1, device_id=target)
    else:
        query = MobilePositionQuery(sn=1, device_id=target)
    subscribe = build_request(
        "SUBSCRIBE",
        f"sip:{GW}@{DOMAIN}",
        from_uri=f"sip:{UP}@3401000000",
        to_uri=f"sip:{GW}@{DOMAIN}",
        from_tag="r",
        call_id=f"{kind}-{target}",
        contact=f"sip:{UP}@10.0.0.1",
        headers=[("Event", kind), ("Expires", str(granted))],
    )
    return InboundSubscription.accept(
        subscribe,
        query,
        peer=Peer("udp", "10.0.0.1", 5060),
        local_uri=f"sip:{GW}@{DOMAIN}",
        remote_uri=f"sip:{UP}@3401000000",
        expires_at=now + granted,
    )


def upper(
    name: str, share: object, kinds: Mapping[str, str], *, online: bool = True, **kw: object
) -> Upper:
    config, catalog, devices = world()
    fields: dict[str, object] = {"id": UP, "domain": "3401000000", "host": "10.0.0.1"}
    fields.update({"password": "x", "share": share})
    fields.update(kw)
    up = UpperPlatform.model_validate(fields)
    idmap = IdMap(up, MemoryStore(), GW)
    view = SharedView(up, config.gateway, catalog, devices, idmap)
    subs = {kind: subscription(kind, target) for kind, target in kinds.items()}
    return Upper(name, view, idmap, subs, online)


def planner_for() -> NotifyPlanner:
    # Every upper's view reads a catalog of the same content; the planner asks one for owners.
    config, catalog, _ = world()
    return NotifyPlanner(config.gateway, catalog)


def change(owner: str, item: CatalogItem, event: str = "UPDATE") -> CatalogChange:
    after = None if event == "DEL" else item
    return CatalogChange(owner, item.device_id, event, item, after)


# -- catalog changes: scope and coverage ----------------------------------------------------
def test_a_catalog_change_goes_to_the_subscriptions_that_see_and_cover_it() -> None:
    everything = upper("all", "all", {"Catalog": GW})
    by_domain = upper("domain", "all", {"Catalog": DOMAIN})
    nvr2_only = upper("nvr2", "all", {"Catalog": NVR2})
    org_only = upper("org", "all", {"Catalog": ORG})
    shares_nvr1 = upper("share1", (NVR1,), {"Catalog": GW})
    no_sub = upper("none", "all", {})
    uppers = [everything, by_domain, nvr2_only, org_only, shares_nvr1, no_sub]
    planner = planner_for()

    def heard(owner: str, item: CatalogItem) -> set[str]:
        return {n.audience.name for n in planner.catalog_change(uppers, change(owner, item))}

    assert heard(NVR2, cam(CAM3, NVR2)) == {"all", "domain", "nvr2"}
    assert heard(NVR1, cam(CAM1, NVR1)) == {"all", "domain", "share1"}
    # Under the virtual organisation: its subscription covers it.
    assert heard(NVR1, cam(CAM2, f"{NVR1}/{ORG}")) == {"all", "domain", "org", "share1"}


def test_a_notice_carries_the_item_as_the_upper_sees_it() -> None:
    a = upper("all", "all", {"Catalog": GW})
    planner = planner_for()
    item = cam(CAM1, NVR1, password="secret")
    (notice,) = planner.catalog_change([a], change(NVR1, item, "ADD"))
    assert notice.event == "ADD" and notice.item.device_id == CAM1
    assert notice.item.password is None and notice.item.event is None
    (gone,) = planner.catalog_change([a], change(NVR1, item, "DEL"))
    assert gone.event == "DEL" and gone.item == CatalogItem(device_id=CAM1)


def test_a_deleted_item_the_upper_never_knew_is_not_notified() -> None:
    recoded = upper("recode", "all", {"Catalog": GW}, id_policy="recode", civil_code="340100")
    planner = planner_for()
    assert planner.catalog_change([recoded], change(NVR1, cam(CAM1, NVR1), "DEL")) == []
    (added,) = planner.catalog_change([recoded], change(NVR1, cam(CAM1, NVR1), "ADD"))
    assert added.item.device_id != CAM1 and recoded.idmap.to_local(added.item.device_id) == CAM1
    (gone,) = planner.catalog_change([recoded], change(NVR1, cam(CAM1, NVR1), "DEL"))
    assert gone.item.device_id == added.item.device_id


def test_tree_nodes_go_only_to_uppers_that_share_everything() -> None:
    everything = upper("all", "all", {"Catalog": GW})
    shares_nvr1 = upper("share1", (NVR1,), {"Catalog": GW})
    planner = planner_for()
    node = CatalogItem(device_id=ORG, name="路口", info=CatalogInfo(business_group_id=GROUP))
    notices = planner.catalog_change([everything, shares_nvr1], change(NVR1, node))
    assert [n.audience.name for n in notices] == ["all"]


def test_a_device_going_offline_is_notified_where_it_is_seen_and_covered() -> None:
    everything = upper("all", "all", {"Catalog": GW})
    nvr1_only = upper("nvr1", "all", {"Catalog": NVR1})
    shares_cam3 = upper("cam3", (CAM3,), {"Catalog": GW})
    uppers = [everything, nvr1_only, shares_cam3]
    planner = planner_for()
    notices = planner.device_event(uppers, NVR2, "OFF")
    assert [(n.audience.name, n.event, n.item.device_id) for n in notices] == [
        ("all", "OFF", NVR2),
        ("cam3", "OFF", NVR2),  # sharing one of its channels shows the device
    ]


def test_a_device_listed_in_its_own_catalog_is_notified_by_its_items_change() -> None:
    everything = upper("all", "all", {"Catalog": GW})
    planner = planner_for()
    assert planner.device_event([everything], CAM1, "OFF") == []  # an item NVR1 reported


def test_notify_items_put_devices_first_and_keep_each_items_own_order() -> None:
    pending = [
        ("OFF", CatalogItem(device_id=CAM1)),
        ("OFF", CatalogItem(device_id=NVR1)),
        ("ON", CatalogItem(device_id=CAM1)),
        ("OFF", CatalogItem(device_id=NVR2)),
    ]
    items = NotifyPlanner.notify_items(pending)
    assert [(i.device_id, i.event) for i in items] == [
        (NVR1, "OFF"),
        (NVR2, "OFF"),
        (CAM1, "OFF"),
        (CAM1, "ON"),
    ]


def test_a_new_catalog_subscription_hears_of_the_offline_items_first() -> None:
    view = [cam(CAM1, NVR1), cam(CAM3, NVR2, status="OFF")]
    assert NotifyPlanner.offline_items(view) == [CatalogItem(device_id=CAM3, event="OFF")]
    planner = planner_for()
    msg = planner.catalog_notify(7, NotifyPlanner.offline_items(view))
    assert (msg.sn, msg.device_id, msg.sum_num, len(msg.items)) == (7, GW, 1, 1)


def test_the_gateway_is_named_by_its_id_or_its_domain() -> None:
    planner = planner_for()
    assert planner.is_gateway(GW) and planner.is_gateway(DOMAIN)
    assert not planner.is_gateway(NVR1)


# -- alarms and positions -------------------------------------------------------------------
def test_an_alarm_goes_in_the_dialog_that_covers_it_else_as_a_message() -> None:
    in_dialog = upper("dialog", "all", {"Alarm": NVR1})
    message = upper("message", "all", {})
    offline = upper("offline", "all", {"Alarm": GW}, online=False)
    not_shared = upper("hidden", (NVR2,), {"Alarm": GW})
    uppers = [in_dialog, message, offline, not_shared]
    planner = planner_for()
    sns = iter(range(100, 200))
    alarm = Alarm(NVR1, CAM1, priority=1, method=5, alarm_type=2, event_type=1, time="t")
    plans = planner.alarm(uppers, alarm, lambda: next(sns))
    assert [(p.audience.name, p.sub is not None) for p in plans] == [
        ("dialog", True),
        ("message", False),
    ]
    assert [p.message.sn for p in plans] == [100, 101]
    msg = plans[0].message
    assert msg.device_id == CAM1 and msg.alarm_priority == 1
    assert msg.info is not None and msg.info.alarm_type == 2
    # An alarm of NVR2 is outside the dialog's DeviceID: it goes as a MESSAGE.
    (other,) = planner.alarm([in_dialog], Alarm(NVR2, CAM3), lambda: 1)
    assert other.sub is None and other.message.device_id == CAM3


def test_an_alarm_naming_an_id_the_device_does_not_own_is_the_devices() -> None:
    a = upper("all", "all", {})
    planner = planner_for()
    (plan,) = planner.alarm([a], Alarm(NVR2, CAM1), lambda: 1)  # CAM1 is NVR1's
    assert plan.message.device_id == NVR2


def test_positions_go_only_in_a_subscription_that_covers_them() -> None:
    everything = upper("all", "all", {"MobilePosition": GW})
    cam1_only = upper("cam1", "all", {"MobilePosition": CAM1})
    no_sub = upper("none", "all", {"Catalog": GW})
    uppers = [everything, cam1_only, no_sub]
    planner = planner_for()
    event = MobilePositionReceived(
        NVR1,
        (
            PositionItem(device_id=CAM1, longitude=118.1, latitude=31.2),
            PositionItem(device_id=CAM2, longitude=118.2, latitude=31.3),
            PositionItem(device_id=None, longitude=118.3, latitude=31.4),
        ),
    )
    plans = planner.positions(uppers, event, lambda: 5)
    assert [(p.audience.name, p.message.device_id) for p in plans] == [
        ("all", CAM1),
        ("all", CAM2),
        ("all", NVR1),  # no DeviceID: the device's own position
        ("cam1", CAM1),
    ]
    assert all(p.sub.kind == "MobilePosition" for p in plans)


# -- expiry with a fake clock ---------------------------------------------------------------
def test_granted_expires_defaults_and_caps() -> None:
    assert granted_expires(None) == DEFAULT_EXPIRES == 600
    assert granted_expires(3600) == 3600
    assert granted_expires(10**9) == MAX_EXPIRES == 86400
    assert granted_expires(0) == 0


def test_a_subscription_expires_on_the_clock_and_a_refresh_extends_it() -> None:
    clock = FakeClock(1000.0)
    sub = subscription("Catalog", GW, now=clock(), granted=granted_expires(60)).notifier
    assert sub.remaining(clock()) == 60 and not sub.expired(clock())
    clock.now += 59.5
    assert sub.remaining(clock()) == 0 and not sub.expired(clock())
    sub.extend(clock(), granted_expires(120))
    assert sub.remaining(clock()) == 120
    clock.now += 120
    assert sub.expired(clock()) and sub.remaining(clock()) == 0
    clock.now += 1000
    assert sub.remaining(clock()) == 0  # never negative in Subscription-State


def test_each_notify_of_a_dialog_takes_the_next_cseq() -> None:
    sub = subscription("Alarm", GW)
    notifies = [sub.notifier.notify(sub.notifier.active(1000.0)) for _ in range(3)]
    assert [n.cseq.seq for n in notifies] == [1, 2, 3]


def test_the_record_holds_the_dialog_of_the_subscribe() -> None:
    """What the uplink kept in fields of its own now comes from the RFC 6665 dialog: the
    SUBSCRIBE's Call-ID and tag, its Contact as the NOTIFY target, the Event it named, the
    kind and target from its body."""
    sub = subscription("MobilePosition", NVR1)
    d = sub.notifier.dialog
    assert (sub.kind, sub.target, sub.call_id) == ("MobilePosition", NVR1, f"MobilePosition-{NVR1}")
    assert (d.remote_tag, d.target) == ("r", f"sip:{UP}@10.0.0.1")
    assert sub.notifier.event == "MobilePosition"
    assert sub.local_tag == d.local_tag != "" and not sub.ended
    sub.notifier.terminate("timeout")
    assert sub.ended
