"""The catalog: devices' channels and the tree above them, and the change events they make."""

from gateway.catalog.catalog import Catalog, SyncDiff

__all__ = ["Catalog", "SyncDiff"]
