"""The floors of the house, checked from the source (docs/architecture.md, "Floors").

Each module's imports are read with ``ast`` (no module is imported), so a change that quietly
makes a lower floor reach up, or one floor-4 package reach into another's private modules,
fails here with the offending import named.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"

# Which floor each part of gateway/ stands on. A module's part is the longest key that prefixes
# its dotted name.
FLOORS: dict[str, int] = {
    "gateway": 0,  # gateway/__init__.py: the version only
    "gateway.metrics": 0,
    "gateway.tasks": 0,
    "gateway.logs": 0,  # the log pipeline: the gateway and its relay workers configure it
    "gateway.settings": 0,
    "gateway.sip": 1,
    "gateway.manscdp": 1,
    "gateway.model": 1,
    "gateway.media.sdp": 1,
    "gateway.media.rtp": 1,
    "gateway.media.ps": 1,  # PS demultiplexing, RTP reassembly (preview, conformance)
    "gateway.media.h264": 1,  # H.264 access units and parameter sets
    "gateway.store": 2,
    # The bus carries floor-1 values (catalog items, alarms, positions), so it stands above them
    # rather than on floor 0 as the first plan had it.
    "gateway.events": 2,
    "gateway.cluster": 2,
    "gateway.directory": 2,  # social units and device accounts (credentials)
    "gateway.catalog": 3,
    "gateway.media": 3,
    "gateway.downlink": 4,
    "gateway.uplink": 4,
    # Live preview in the browser: starts its local sessions through the uplink's Calls.
    "gateway.preview": 4,
    "gateway.api": 5,
    "gateway.app": 6,
    "gateway.cli": 6,
    "gateway.routes": 6,
}

# Parts that may import nothing of gateway/ outside themselves, whatever their floor.
SELF_CONTAINED = ("gateway.sip", "gateway.manscdp", "gateway.model")

# Floor-4 packages may use each other only in the direction given here. Every package is used
# from outside only through its public face (``from gateway.downlink import X``).
FLOOR4_USES: dict[str, tuple[str, ...]] = {
    "gateway.downlink": (),
    "gateway.uplink": ("gateway.downlink",),
    "gateway.preview": ("gateway.uplink", "gateway.downlink"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The package (``gateway.sip``) a module of gateway/ belongs to, or "" for a top module."""
    parts = module.split(".")
    if len(parts) < 2 or not (ROOT / parts[0] / parts[1] / "__init__.py").exists():
        return ""
    return ".".join(parts[:2])


def part_of(module: str) -> str:
    best = ""
    for key in FLOORS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    if not best:
        raise AssertionError(f"{module} stands on no floor: add it to FLOORS and the doc")
    return best


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (``from a.b import c`` gives a.b, or a.b.c if a module)
    line: int


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from gateway.media import rtp`` imports the module gateway.media.rtp.
                candidate = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")) / "__init__.py"
                ).exists()
                found.append(Import(module, candidate if is_module else base, node.lineno))
    return found


def gateway_imports() -> list[Import]:
    out: list[Import] = []
    for path in sorted(GATEWAY.rglob("*.py")):
        ours = (i for i in imports_of(path) if i.target.split(".")[0] in ("gateway", "conformance"))
        out.extend(ours)
    return out


def violations() -> list[str]:
    bad: list[str] = []
    for imp in dict.fromkeys(gateway_imports()):
        where = f"{imp.module} (line {imp.line}) imports {imp.target}"
        if imp.target.split(".")[0] == "conformance":
            bad.append(f"{where}: the gateway never imports the conformance suite")
            continue
        src, dst = part_of(imp.module), part_of(imp.target)
        if src == dst:
            continue
        if FLOORS[dst] > FLOORS[src]:
            bad.append(f"{where}: floor {FLOORS[src]} may not reach up to floor {FLOORS[dst]}")
        if src.startswith(SELF_CONTAINED) and dst != "gateway":
            bad.append(f"{where}: {src} imports nothing of gateway/ outside itself")
        if src in FLOOR4_USES and dst in FLOOR4_USES and dst not in FLOOR4_USES[src]:
            bad.append(f"{where}: {src} may not use {dst} at all")
        face = package_of(imp.target)
        if face and not (imp.module + ".").startswith(face + ".") and imp.target != face:
            bad.append(f"{where}: use {face}'s public face (its __init__), not its modules")
    return bad


def test_imports_follow_the_floors() -> None:
    assert violations() == []


def test_every_module_stands_on_a_floor() -> None:
    for path in GATEWAY.rglob("*.py"):
        part_of(module_name(path))


def test_each_package_has_a_public_face() -> None:
    for init in sorted(GATEWAY.rglob("__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        names = [
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        ]
        if init.parent == GATEWAY:
            continue  # gateway/__init__.py holds the version only
        assert "__all__" in names, f"{module_name(init)} has no __all__"


# -- the checker itself must be able to fail ---------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway gateway/ tree the checker reads instead of the real one."""
    pkg = tmp_path / "gateway"
    for sub in ("sip", "media", "uplink", "downlink"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("__all__: list[str] = []\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "metrics.py").write_text("")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "GATEWAY", pkg)
    return pkg


@pytest.mark.parametrize(
    ("path", "source", "complaint"),
    [
        ("media/sessions.py", "from gateway.uplink import Uplink\n", "may not reach up"),
        ("sip/endpoint.py", "from gateway.metrics import Metrics\n", "outside itself"),
        ("downlink/x.py", "from gateway.uplink import Uplink\n", "may not use gateway.uplink"),
        ("uplink/x.py", "from gateway.downlink.registrar import R\n", "public face"),
        ("uplink/y.py", "from ..downlink import registrar\n", "public face"),
        ("media/z.py", "import conformance.peers\n", "never imports the conformance"),
        ("media/q.py", "from gateway.sip.endpoint import Endpoint\n", "public face"),
    ],
)
def test_checker_catches(scratch: Path, path: str, source: str, complaint: str) -> None:
    (scratch / "downlink" / "registrar.py").write_text("")
    (scratch / path).write_text(source)
    found = violations()
    assert any(complaint in v for v in found), found


def test_checker_accepts_the_public_face(scratch: Path) -> None:
    (scratch / "uplink" / "calls.py").write_text("from gateway.downlink import Downlink\n")
    (scratch / "media" / "sessions.py").write_text("from gateway.metrics import Metrics\n")
    assert violations() == []
