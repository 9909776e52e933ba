"""Platform side, cascade from below: a lower platform registers to the target.

A social unit with its own platform joins the city network as a *lower platform* (a SIP
server, type 200 in its ID), not as a device: it registers the same way, and its catalog is a
tree of devices with their channels beneath it (reference §7.1, §7.2). The suite plays such a
lower platform with a spare simulated peer whose catalog holds two NVRs with two cameras each.
"""

from __future__ import annotations

from conformance.peers.catalog_gen import channel_item, sub_id
from conformance.suite.case import case
from conformance.suite.cases.common import (
    fail_problems,
    item_differences,
    item_problems,
    short,
)
from conformance.suite.context import Context
from conformance.suite.harness import HarnessError
from gateway.manscdp.messages import CatalogItem

BOTH = ("2016", "2022")
LOWER_SPARE = 7  # the spare's serial offset (apart from the other cases' spares)
NVRS = 2
CAMERAS = 2  # per NVR
_NVR_SERIAL = 9950000
_CAMERA_SERIAL = 9960000


def lower_catalog(lower_id: str, edition: str) -> list[CatalogItem]:
    """The lower platform's tree: each NVR (ParentID the platform), then its cameras (ParentID
    the NVR), every mandatory field filled as the edition asks."""
    gb2022 = edition == "2022"
    civil = lower_id[:6]
    items: list[CatalogItem] = []
    for k in range(1, NVRS + 1):
        nvr = sub_id(lower_id, 118, _NVR_SERIAL + k)
        items.append(
            CatalogItem(
                device_id=nvr,
                name=f"下级平台NVR{k}",
                manufacturer="SimVision",
                model="SV-NVR7608",
                owner=None if gb2022 else "Owner",
                civil_code=civil,
                address=f"下级平台{k}号楼",
                parental=1,
                parent_id=lower_id,
                safety_way=None if gb2022 else 0,
                register_way=1,
                secrecy=0,
                ip_address=f"10.1.{k}.2",
                port=5060,
                status="ON",
            )
        )
        for n in range(1, CAMERAS + 1):
            number = (k - 1) * CAMERAS + n
            items.append(
                channel_item(
                    nvr,
                    sub_id(lower_id, 131, _CAMERA_SERIAL + number),
                    number,
                    parent_id=nvr,
                    civil_code=civil,
                    manufacturer="SimVision",
                    model="SV-IPC2T47",
                    gb2022=gb2022,
                )
            )
    return items


@case(
    "E-LOWER-01",
    "Platform side: a lower platform registers and its tree of devices and cameras is read",
    grade="E",
    clause_2016="9.1, 9.5, Annex N",
    clause_2022="9.1, 9.5, Annex M",
    roles=("platform", "gateway"),
    editions=BOTH,
)
async def lower_platform(ctx: Context) -> None:
    """Steps: a lower platform of the suite (ID type 200) registers to the target with digest
    and keeps alive; the target queries its catalog; the lower answers with its tree (two NVRs,
    ParentID the platform, with two cameras each, ParentID the NVR), one item per MESSAGE over
    UDP; below a gateway, the suite's upper then reads the gateway's catalog; the lower
    unregisters.

    Pass: the registration is accepted (200 after the 401); the target sends
    ``Query/Catalog`` with the lower platform's ID and answers every Response MESSAGE 200;
    below a gateway, the upper sees every NVR and camera of the lower with every field as
    sent (ParentIDs may be re-rooted) and each meets the standard's rules for its kind."""
    h = ctx.harness
    o = ctx.options
    lower = h.spare_device(
        LOWER_SPARE,
        install=True,
        type_code="200",
        channel_count=0,
        name="下级平台",
        model="SV-PLATFORM",
    )
    lower_id = lower.device_id
    items = lower_catalog(lower_id, o.edition)
    lower.catalog_extra_items = list(items)
    timeout = max(10.0, o.case_timeout - 10)
    try:
        try:
            q = await h.resync(lower, timeout)
        except (TimeoutError, HarnessError) as exc:
            ctx.fail(f"the lower platform {lower_id}: {exc}")
        statuses = [r.status for r in lower.responses]
        ctx.step(f"lower platform {lower_id} registered: {statuses}")
        ctx.check(
            statuses[-2:] == [401, 200],
            "the lower platform's registration was not challenged with digest, then accepted",
            expected="401, then 200",
            seen=statuses,
        )
        ctx.expect_equal(q.device_id, lower_id, "DeviceID of the target's Catalog query")
        parts = [s for c, sn, s in lower.answer_statuses if c == "Catalog" and sn == q.sn]
        ctx.step(f"the target read {len(items)} items in {len(parts)} MESSAGEs")
        ctx.check(
            bool(parts) and all(s == 200 for s in parts),
            "every catalog Response MESSAGE of the lower platform is answered 200",
            expected="200 to each part",
            seen=parts,
        )
        if h.role != "gateway":
            return
        res = await h.catalog(timeout=10.0, idle=2.0)
        seen = {i.device_id: i for i in res.items}
        missing = [i.device_id for i in items if i.device_id not in seen]
        ctx.check(not missing, f"the upper does not see {short(missing)} of the lower platform")
        different = []
        problems: list[str] = []
        for item in items:
            got = seen[item.device_id]
            diff = item_differences(item, got, ignore=("parent_id",))
            if diff:
                different.append(f"{item.device_id}: " + ", ".join(diff[:4]))
            problems += item_problems(got, o.edition)
        ctx.check(not different, "the lower platform's items changed on the way up: "
                  + "; ".join(different[:3]), seen=f"{len(different)} items differ")  # fmt: skip
        fail_problems(ctx, "the lower platform's items at the upper", problems)
        cameras = [i for i in items if i.device_id[10:13] == "131"]
        for cam in cameras:
            parent = (seen[cam.device_id].parent_id or "").split("/")
            ctx.check(
                cam.parent_id in parent,
                f"camera {cam.device_id} is no longer under its NVR at the upper",
                expected=f"ParentID naming {cam.parent_id}",
                seen=seen[cam.device_id].parent_id,
            )
        ctx.step(f"the upper sees all {len(items)} items, each camera under its NVR")
    finally:
        await h.drop_spare(lower)
