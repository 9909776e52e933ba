"""What a device reports unasked, as model records: alarms.

GB/T 28181-2022 §9.4 (alarm event notification). Building the record is pure:
the Downlink stores it, logs it and publishes it.
"""

from __future__ import annotations

from gateway.manscdp import AlarmNotify
from gateway.model import Alarm

__all__ = ["alarm_from"]


def alarm_from(device_id: str, msg: AlarmNotify, received_at: float) -> Alarm:
    """The alarm ``device_id`` reported in ``msg`` (its DeviceID: the channel or alarm input
    that raised it), received at ``received_at``."""
    info = msg.info
    return Alarm(
        device_id=device_id,
        channel_id=msg.device_id,
        priority=msg.alarm_priority,
        method=msg.alarm_method,
        alarm_type=info.alarm_type if info is not None else None,
        event_type=(
            info.alarm_type_param.event_type
            if info is not None and info.alarm_type_param is not None
            else None
        ),
        time=msg.alarm_time or "",
        description=msg.alarm_description or "",
        longitude=msg.longitude,
        latitude=msg.latitude,
        received_at=received_at,
    )
