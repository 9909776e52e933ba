"""The ``Date`` of a REGISTER 200 (GB/T 28181 §9.10), formatted once a second and cached: it
must equal what ``datetime`` gives for every instant, zone and rounding edge."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.downlink import gb_date, make_tz

ZONES = [make_tz(z) for z in ("Asia/Shanghai", "UTC", "+08:00", "-03:30")]


def reference(now: float, zone: object) -> str:
    dt = datetime.fromtimestamp(now, zone)  # type: ignore[arg-type]
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


@given(
    st.one_of(
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
        # just under a whole second, where rounding to microseconds carries
        st.integers(0, 2**32).map(lambda s: s + 0.9999996),
        st.integers(0, 2**32).map(lambda s: s + 0.0004999),
    ),
    st.sampled_from(ZONES),
)
def test_gb_date_is_what_datetime_says(now: float, zone: object) -> None:
    assert gb_date(now, zone) == reference(now, zone)  # type: ignore[arg-type]
    assert gb_date(now, zone) == reference(now, zone)  # from the cache this time
