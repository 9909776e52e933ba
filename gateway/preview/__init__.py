"""Live preview in the browser (floor 4): WHEP sessions over WebRTC with aiortc, fed by the
channel's shared live leg, the camera's H.264 passed through as encoded frames."""

from gateway.preview.service import PreviewError, Previews

__all__ = ["PreviewError", "Previews"]
