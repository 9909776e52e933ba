"""Configuration (floor 0): the typed sections each part is given, and reading them from TOML."""

from gateway.settings.load import ConfigError, config_from_dict, load_config
from gateway.settings.sections import (
    AuthSection,
    Config,
    DevicePassword,
    DownlinkSection,
    GatewaySection,
    Identity,
    KeepaliveSection,
    LogSection,
    MediaSection,
    MediaTransport,
    OverloadSection,
    RegistrarSection,
    SipSection,
    StoreSection,
    UplinkSection,
    UpperPlatform,
)

__all__ = [
    "AuthSection",
    "Config",
    "ConfigError",
    "DevicePassword",
    "DownlinkSection",
    "GatewaySection",
    "Identity",
    "KeepaliveSection",
    "LogSection",
    "MediaSection",
    "MediaTransport",
    "OverloadSection",
    "RegistrarSection",
    "SipSection",
    "StoreSection",
    "UplinkSection",
    "UpperPlatform",
    "config_from_dict",
    "load_config",
]
