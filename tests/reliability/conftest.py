"""The media rig's fixtures (:mod:`tests.media.rig`) for the fault tests in this folder."""

from tests.media.rig import nvr_endpoint, rig_factory, upper_endpoint

__all__ = ["nvr_endpoint", "rig_factory", "upper_endpoint"]
