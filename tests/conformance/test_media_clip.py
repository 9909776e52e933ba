"""The generated H.264 clip and the decoding counter that proves received video is real."""

from __future__ import annotations

import pytest

from conformance.media.clip import Frame, h264_clip, nal_types
from conformance.media.decode import H264Counter

SPS, PPS, IDR, NON_IDR = 7, 8, 5, 1


def test_clip_has_requested_frames_and_key_frames_every_gop() -> None:
    clip = h264_clip(30, width=176, height=144, gop=10)
    assert len(clip) == 30
    assert [f.index for f in clip] == list(range(30))
    assert [f.index for f in clip if f.key] == [0, 10, 20]
    assert clip[0].key


def test_every_idr_carries_sps_and_pps_and_other_frames_do_not() -> None:
    for frame in h264_clip():
        types = nal_types(frame.data)
        assert frame.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
        if frame.key:
            assert SPS in types and PPS in types and IDR in types
            assert types.index(SPS) < types.index(IDR) and types.index(PPS) < types.index(IDR)
        else:
            assert IDR not in types and SPS not in types and NON_IDR in types


def test_frames_differ_and_the_clip_is_cached() -> None:
    clip = h264_clip()
    assert len({f.data for f in clip}) == len(clip)
    assert h264_clip() is clip
    assert h264_clip(50, fps=25, width=320, height=240, gop=25) is clip


def test_clip_decodes_to_as_many_pictures_as_frames() -> None:
    counter = H264Counter()
    produced = [counter.decode(frame.data) for frame in h264_clip()]
    assert produced == [1] * 50  # no decoder delay: each access unit gives its picture at once
    assert counter.frames == 50 and counter.errors == 0


def test_decoding_from_a_key_frame_in_the_middle_works() -> None:
    clip = h264_clip()
    counter = H264Counter()
    assert sum(counter.decode(f.data) for f in clip[25:]) == 25
    assert counter.errors == 0


def test_counter_counts_garbage_as_errors_without_raising() -> None:
    counter = H264Counter()
    assert counter.decode(b"\x00\x00\x00\x01\x67" + bytes(range(50))) == 0
    assert counter.decode(b"") == 0
    # P-frames without their IDR do not decode into pictures.
    assert sum(counter.decode(f.data) for f in h264_clip()[1:5]) == 0
    assert counter.errors >= 1
    assert counter.frames == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"frames": 0}, "positive"), ({"gop": 0}, "positive"), ({"width": 321}, "even")],
)
def test_bad_clip_parameters_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        h264_clip(**kwargs)


def test_frame_is_a_frozen_value() -> None:
    frame = Frame(b"\x00\x00\x01\x09", key=False, index=3)
    with pytest.raises(AttributeError):
        frame.key = True  # type: ignore[misc]
