"""Configuration: defaults, the documented keys, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Config, ConfigError, UpperPlatform, config_from_dict, load_config

CONTRACT = """
[gateway]
id = "34020000002000000001"
domain = "3402000000"
[sip]
host = "0.0.0.0"
port = 5060
advertised_host = ""
[auth]
password = "12345678"
unknown_devices = "accept"
[[auth.devices]]
id = "34020000001180000001"
password = "secret"
[keepalive]
interval = 60
timeout_count = 3
[store]
backend = "sqlite"
path = "data/gateway.db"
"""


def test_defaults_match_the_contract() -> None:
    cfg = load_config(None)
    assert cfg.gateway.id == "34020000002000000001"
    assert cfg.gateway.domain == "3402000000"
    assert (cfg.sip.host, cfg.sip.port) == ("0.0.0.0", 5060)
    assert cfg.store.backend == "sqlite" and cfg.store.path == "data/gateway.db"
    assert (cfg.keepalive.interval, cfg.keepalive.timeout_count) == (60, 3)
    assert cfg.auth.unknown_devices == "accept"


def test_contract_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(CONTRACT)
    cfg = load_config(path)
    assert cfg.device_password("34020000001180000001") == "secret"
    assert cfg.device_password("34020000001180000002") == "12345678"
    reject = config_from_dict({"auth": {"unknown_devices": "reject"}})
    assert reject.device_password("34020000001180000002") is None


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sip": {"prot": 5060}}, "sip.prot: unknown key"),
        ({"extra": {}}, "extra: unknown key"),
        ({"sip": {"port": 70000}}, "sip.port"),
        ({"gateway": {"id": "123"}}, "gateway.id"),
        ({"gateway": {"time_zone": "Mars/Olympus"}}, "gateway.time_zone"),
        ({"auth": {"unknown_devices": "maybe"}}, "auth.unknown_devices"),
        ({"auth": {"devices": [{"id": "1", "password": "x"}]}}, "auth.devices.0.id"),
        ({"keepalive": {"interval": 0}}, "keepalive.interval"),
        ({"store": {"backend": "mongo"}}, "store.backend"),
        ({"registrar": {"min_expires": 100, "default_expires": 50}}, "registrar"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert key in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sip\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_readme_documents_every_key() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for section_name, section in Config.model_fields.items():
        model = section.annotation
        assert model is not None
        for key in model.model_fields:  # type: ignore[union-attr]
            assert f"`{section_name}.{key}`" in readme, f"README lacks {section_name}.{key}"
    for key in UpperPlatform.model_fields:
        assert f"`uplink.platforms[].{key}`" in readme, f"README lacks uplink.platforms[].{key}"
