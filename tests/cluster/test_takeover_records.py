"""What the holder of an upper keeps in Redis for the next holder, read back: a media dialog
(ended with BYE by the next holder, its CSeq moved on) and a subscription (notified in the same
dialog, its CSeq moved on); records that cannot be read are skipped, not raised."""

from __future__ import annotations

import json

from gateway.manscdp import CatalogQuery
from gateway.sip import Dialog, Notifier, Peer
from gateway.uplink.subscriptions import InboundSubscription
from gateway.uplink.takeover import (
    BYE_CSEQ_GAP,
    NOTIFY_CSEQ_GAP,
    dialog_from,
    dialog_record,
    subscription_from,
    subscription_record,
)


def a_dialog() -> Dialog:
    return Dialog(
        call_id="c1",
        local_tag="lt",
        remote_tag="rt",
        local="<sip:34020000002000000001@3402000000>",
        remote="<sip:34010000002000000001@3401000000>",
        target="sip:34010000002000000001@127.0.0.1:5060",
        peer=Peer("udp", "127.0.0.1", 5060),
        local_cseq=3,
        remote_cseq=20,
    )


def test_dialog_round_trip_through_json() -> None:
    d = a_dialog()
    back = dialog_from(json.loads(json.dumps(dialog_record(d))), BYE_CSEQ_GAP)
    assert back.call_id == d.call_id and back.peer == d.peer
    assert (back.local_tag, back.remote_tag, back.target) == (d.local_tag, d.remote_tag, d.target)
    bye = back.request("BYE")
    assert bye.cseq.seq == d.local_cseq + BYE_CSEQ_GAP + 1
    assert bye.from_.tag == "lt" and bye.to.tag == "rt" and bye.call_id == "c1"


def test_subscription_round_trip_through_json() -> None:
    query = CatalogQuery(sn=5, device_id="34020000002000000001")
    sub = InboundSubscription(
        kind="Catalog",
        target=query.device_id,
        query=query,
        notifier=Notifier(a_dialog(), "Catalog;id=7", expires_at=1000.0),
    )
    record = json.loads(json.dumps(subscription_record(sub)))
    back = subscription_from(record)
    assert back is not None
    assert (back.kind, back.target, back.query.sn) == ("Catalog", sub.target, 5)
    assert back.notifier.event == "Catalog;id=7" and back.notifier.expires_at == 1000.0
    notify = back.notifier.notify("active;expires=10")
    assert notify.call_id == "c1" and notify.from_.tag == "lt"
    assert notify.cseq.seq == 3 + NOTIFY_CSEQ_GAP + 1
    # Unreadable records are skipped.
    assert subscription_from({**record, "query": "<not xml"}) is None
    assert subscription_from({**record, "kind": "Presence"}) is None
    assert subscription_from({"kind": "Catalog"}) is None
