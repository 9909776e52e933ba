"""End to end: a gateway, a simulated NVR streaming the 320x240 25 fps clip, and aiortc viewers
pulling the channel through :class:`gateway.preview.Previews` and decoding what they get."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import wait_for
from tests.media.rig import Rig
from tests.preview.conftest import ViewerClient

pytestmark = pytest.mark.timeout(60)


async def test_a_viewer_gets_decodable_frames(
    preview_rig: Callable[..., Awaitable[Rig]], viewers: Callable[..., ViewerClient]
) -> None:
    rig = await preview_rig()
    previews = rig.gw.previews
    client = viewers()
    session_id, answer = await previews.open(rig.channel, await client.offer(), owner="t")
    await client.accept(answer)
    await wait_for(lambda: client.frames >= 30, 20, "30 decoded frames")
    assert client.sizes == {(320, 240)}
    info = previews.session(session_id)
    assert info is not None and info["frames_sent"] >= 30
    assert await previews.end(session_id)
    assert previews.active == 0
