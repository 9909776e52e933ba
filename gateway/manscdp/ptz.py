"""The PTZ front-end command carried in `PTZCmd` (GB/T 28181-2016/2022 Appendix A.3): eight bytes
written as 16 hex digits, covering pan/tilt/zoom, focus/iris, presets, cruise, scan and the
auxiliary switches. Pure values, no I/O: `decode_ptz` turns text into a `PtzCommand`, `encode`
turns it back, and one builder per instruction makes the commands the gateway sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from gateway.manscdp.errors import DecodeError

PtzKind = Literal[
    "stop",
    "ptz",
    "fi_stop",
    "fi",
    "preset_set",
    "preset_call",
    "preset_delete",
    "cruise_add",
    "cruise_delete",
    "cruise_speed",
    "cruise_dwell",
    "cruise_start",
    "scan",
    "scan_speed",
    "aux_on",
    "aux_off",
]
ScanAction = Literal["start", "left", "right"]

START: Final = 0xA5
VERSION: Final = 0  # high nibble of combination code 1: version 1.0
COMBINATION_CODE_1: Final = (VERSION << 4) | ((0xA + 0x5 + VERSION) % 16)  # always 0x0F

# Instruction bits of the PTZ group (byte 4 = 00xx xxxx), A.3.2.
PAN_RIGHT: Final = 0x01
PAN_LEFT: Final = 0x02
TILT_DOWN: Final = 0x04
TILT_UP: Final = 0x08
ZOOM_IN: Final = 0x10
ZOOM_OUT: Final = 0x20

# Instruction bits of the FI group (byte 4 = 0100 xxxx), A.3.3.
FI: Final = 0x40
FOCUS_FAR: Final = 0x01
FOCUS_NEAR: Final = 0x02
IRIS_OPEN: Final = 0x04
IRIS_CLOSE: Final = 0x08

# Whole-byte instruction codes, A.3.4 to A.3.7.
PRESET_SET: Final = 0x81
PRESET_CALL: Final = 0x82
PRESET_DELETE: Final = 0x83
CRUISE_ADD: Final = 0x84
CRUISE_DELETE: Final = 0x85
CRUISE_SPEED: Final = 0x86
CRUISE_DWELL: Final = 0x87
CRUISE_START: Final = 0x88
SCAN: Final = 0x89
SCAN_SPEED: Final = 0x8A
AUX_ON: Final = 0x8C
AUX_OFF: Final = 0x8D

_CODE_KINDS: Final[dict[int, PtzKind]] = {
    PRESET_SET: "preset_set",
    PRESET_CALL: "preset_call",
    PRESET_DELETE: "preset_delete",
    CRUISE_ADD: "cruise_add",
    CRUISE_DELETE: "cruise_delete",
    CRUISE_SPEED: "cruise_speed",
    CRUISE_DWELL: "cruise_dwell",
    CRUISE_START: "cruise_start",
    SCAN: "scan",
    SCAN_SPEED: "scan_speed",
    AUX_ON: "aux_on",
    AUX_OFF: "aux_off",
}
_SCAN_ACTIONS: Final[tuple[ScanAction, ...]] = ("start", "left", "right")  # indexed by data 2

_PTZ_PAIRS: Final = (
    (PAN_LEFT | PAN_RIGHT, "pan left and right"),
    (TILT_UP | TILT_DOWN, "tilt up and down"),
    (ZOOM_IN | ZOOM_OUT, "zoom in and out"),
)
_FI_PAIRS: Final = (
    (FOCUS_NEAR | FOCUS_FAR, "focus near and far"),
    (IRIS_OPEN | IRIS_CLOSE, "iris open and close"),
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _instruction_error(code: int, data2: int) -> str | None:
    """Why (code, data 2) is not a command of A.3, or None when it is one."""
    if code < FI:
        for mask, what in _PTZ_PAIRS:
            if code & mask == mask:
                return f"instruction 0x{code:02X} sets both {what}"
        return None
    if code < FI + 0x10:
        for mask, what in _FI_PAIRS:
            if code & mask == mask:
                return f"instruction 0x{code:02X} sets both {what}"
        return None
    if code not in _CODE_KINDS:
        return f"unknown instruction code 0x{code:02X}"
    if code == SCAN and data2 >= len(_SCAN_ACTIONS):
        return f"unknown scan action 0x{data2:02X} (00 start, 01 left limit, 02 right limit)"
    return None


def _direction(code: int, plus: int, minus: int) -> int:
    return 1 if code & plus else -1 if code & minus else 0


@dataclass(frozen=True, slots=True)
class PtzCommand:
    """One A.3 command. `code` is byte 4, `data1`/`data2` are bytes 5/6, `data3` is the high
    nibble of byte 7 and `address` the 12-bit address split over bytes 3 and 7.

    Accessors that do not apply to this command's kind return 0 (or None for `scan_action`).
    """

    code: int
    data1: int = 0
    data2: int = 0
    data3: int = 0
    address: int = 1

    def __post_init__(self) -> None:
        for name, value, top in (
            ("code", self.code, 0xFF),
            ("data1", self.data1, 0xFF),
            ("data2", self.data2, 0xFF),
            ("data3", self.data3, 0xF),
            ("address", self.address, 0xFFF),
        ):
            if not 0 <= value <= top:
                raise ValueError(f"{name} {value} out of range 0..{top}")
        reason = _instruction_error(self.code, self.data2)
        if reason is not None:
            raise ValueError(reason)

    def encode(self) -> str:
        """The 16 upper-case hex digits that go into `PTZCmd`."""
        raw = [
            START,
            COMBINATION_CODE_1,
            self.address & 0xFF,
            self.code,
            self.data1,
            self.data2,
            (self.data3 << 4) | (self.address >> 8),
        ]
        raw.append(sum(raw) & 0xFF)
        return bytes(raw).hex().upper()

    def __str__(self) -> str:
        return self.encode()

    @property
    def kind(self) -> PtzKind:
        if self.code < FI:
            return "ptz" if self.code else "stop"
        if self.code < FI + 0x10:
            return "fi" if self.code != FI else "fi_stop"
        return _CODE_KINDS[self.code]

    # Pan/tilt/zoom (A.3.2).

    @property
    def _is_motion(self) -> bool:
        return self.code < FI

    @property
    def pan(self) -> int:
        """-1 left, +1 right, 0 still."""
        return _direction(self.code, PAN_RIGHT, PAN_LEFT) if self._is_motion else 0

    @property
    def tilt(self) -> int:
        """+1 up, -1 down, 0 still."""
        return _direction(self.code, TILT_UP, TILT_DOWN) if self._is_motion else 0

    @property
    def zoom(self) -> int:
        """+1 in (tele), -1 out (wide), 0 still."""
        return _direction(self.code, ZOOM_IN, ZOOM_OUT) if self._is_motion else 0

    @property
    def pan_speed(self) -> int:
        return self.data1 if self._is_motion else 0

    @property
    def tilt_speed(self) -> int:
        return self.data2 if self._is_motion else 0

    @property
    def zoom_speed(self) -> int:
        return self.data3 if self._is_motion else 0

    # Focus/iris (A.3.3).

    @property
    def _is_fi(self) -> bool:
        return FI <= self.code < FI + 0x10

    @property
    def focus(self) -> int:
        """+1 far, -1 near, 0 still."""
        return _direction(self.code, FOCUS_FAR, FOCUS_NEAR) if self._is_fi else 0

    @property
    def iris(self) -> int:
        """+1 open, -1 close, 0 still."""
        return _direction(self.code, IRIS_OPEN, IRIS_CLOSE) if self._is_fi else 0

    @property
    def focus_speed(self) -> int:
        return self.data1 if self._is_fi else 0

    @property
    def iris_speed(self) -> int:
        return self.data2 if self._is_fi else 0

    # Presets, cruise, scan, auxiliary switches (A.3.4 to A.3.7).

    @property
    def preset(self) -> int:
        """Preset number (data 2) of the preset commands and of cruise add/delete point."""
        return self.data2 if PRESET_SET <= self.code <= CRUISE_DELETE else 0

    @property
    def group(self) -> int:
        """Cruise group or scan group (data 1)."""
        return self.data1 if CRUISE_ADD <= self.code <= SCAN_SPEED else 0

    @property
    def value12(self) -> int:
        """The 12-bit value of cruise speed, cruise dwell (seconds) and scan speed."""
        if self.code in (CRUISE_SPEED, CRUISE_DWELL, SCAN_SPEED):
            return self.data2 | (self.data3 << 8)
        return 0

    @property
    def scan_action(self) -> ScanAction | None:
        return _SCAN_ACTIONS[self.data2] if self.code == SCAN else None

    @property
    def aux(self) -> int:
        """Switch number (1 = wiper). The standard puts it in data 1 (byte 5); wvp-GB28181-pro
        reads it from byte 6, so commands from wvp-based uppers may carry it there instead."""
        return self.data1 if self.code in (AUX_ON, AUX_OFF) else 0


def decode_ptz(text: str) -> PtzCommand:
    """Parse a `PTZCmd` value (either letter case, surrounding whitespace ignored)."""
    s = text.strip()
    if len(s) != 16:
        raise DecodeError(f"PTZCmd must be 16 hex digits, got {len(s)} characters")
    if not all(c in _HEX_DIGITS for c in s):
        raise DecodeError("PTZCmd is not hexadecimal")
    b = bytes.fromhex(s)
    if b[0] != START:
        raise DecodeError(f"PTZCmd starts with 0x{b[0]:02X}, expected 0xA5")
    version, check = b[1] >> 4, b[1] & 0xF
    if check != (0xA + 0x5 + version) % 16:
        raise DecodeError(
            f"combination code 1 0x{b[1]:02X}: check nibble {check:X}, "
            f"expected {(0xA + 0x5 + version) % 16:X}"
        )
    if version != VERSION:
        raise DecodeError(f"PTZCmd version nibble {version:X} unsupported (only 0, v1.0)")
    checksum = sum(b[:7]) & 0xFF
    if b[7] != checksum:
        raise DecodeError(f"checksum 0x{b[7]:02X} expected 0x{checksum:02X}")
    reason = _instruction_error(b[3], b[5])
    if reason is not None:
        raise DecodeError(reason)
    return PtzCommand(
        code=b[3],
        data1=b[4],
        data2=b[5],
        data3=b[6] >> 4,
        address=b[2] | ((b[6] & 0xF) << 8),
    )


# Builders: the commands the gateway sends. Arguments out of range raise ValueError.


def _check(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} out of range {low}..{high}")
    return value


def _check_direction(name: str, value: int) -> int:
    if value not in (-1, 0, 1):
        raise ValueError(f"{name} must be -1, 0 or +1, got {value}")
    return value


def _bits(value: int, plus: int, minus: int) -> int:
    return plus if value > 0 else minus if value < 0 else 0


def ptz_move(
    pan: int = 0,
    tilt: int = 0,
    zoom: int = 0,
    pan_speed: int = 0x80,
    tilt_speed: int = 0x80,
    zoom_speed: int = 0x5,
) -> PtzCommand:
    """Start pan (-1 left, +1 right), tilt (+1 up, -1 down) and zoom (+1 in, -1 out) together.

    Only the moving axes carry a speed; all three 0 is the stop command. Motion lasts until the
    next command, so always follow with `ptz_stop()`.
    """
    _check_direction("pan", pan)
    _check_direction("tilt", tilt)
    _check_direction("zoom", zoom)
    _check("pan_speed", pan_speed, 0, 0xFF)
    _check("tilt_speed", tilt_speed, 0, 0xFF)
    _check("zoom_speed", zoom_speed, 0, 0xF)
    code = (
        _bits(pan, PAN_RIGHT, PAN_LEFT)
        | _bits(tilt, TILT_UP, TILT_DOWN)
        | _bits(zoom, ZOOM_IN, ZOOM_OUT)
    )
    return PtzCommand(
        code,
        data1=pan_speed if pan else 0,
        data2=tilt_speed if tilt else 0,
        data3=zoom_speed if zoom else 0,
    )


def ptz_stop() -> PtzCommand:
    return PtzCommand(0x00)


def fi(
    focus: int = 0, iris: int = 0, focus_speed: int = 0x80, iris_speed: int = 0x80
) -> PtzCommand:
    """Start focus (+1 far, -1 near) and iris (+1 open, -1 close); both 0 is the FI stop."""
    _check_direction("focus", focus)
    _check_direction("iris", iris)
    _check("focus_speed", focus_speed, 0, 0xFF)
    _check("iris_speed", iris_speed, 0, 0xFF)
    code = FI | _bits(focus, FOCUS_FAR, FOCUS_NEAR) | _bits(iris, IRIS_OPEN, IRIS_CLOSE)
    return PtzCommand(
        code,
        data1=focus_speed if focus else 0,
        data2=iris_speed if iris else 0,
    )


def fi_stop() -> PtzCommand:
    return PtzCommand(FI)


def _preset(code: int, n: int) -> PtzCommand:
    return PtzCommand(code, data2=_check("preset", n, 1, 0xFF))  # 0 is reserved


def preset_set(n: int) -> PtzCommand:
    return _preset(PRESET_SET, n)


def preset_call(n: int) -> PtzCommand:
    return _preset(PRESET_CALL, n)


def preset_delete(n: int) -> PtzCommand:
    return _preset(PRESET_DELETE, n)


def _group(group: int) -> int:
    return _check("group", group, 0, 0xFF)


def _value12(code: int, group: int, name: str, value: int) -> PtzCommand:
    _check(name, value, 0, 0xFFF)
    return PtzCommand(code, data1=_group(group), data2=value & 0xFF, data3=value >> 8)


def cruise_add(group: int, preset: int) -> PtzCommand:
    return PtzCommand(CRUISE_ADD, data1=_group(group), data2=_check("preset", preset, 1, 0xFF))


def cruise_delete(group: int, preset: int = 0) -> PtzCommand:
    """Remove one preset from a cruise; preset 0 deletes the whole cruise."""
    return PtzCommand(CRUISE_DELETE, data1=_group(group), data2=_check("preset", preset, 0, 0xFF))


def cruise_speed(group: int, speed: int) -> PtzCommand:
    return _value12(CRUISE_SPEED, group, "speed", speed)


def cruise_dwell(group: int, seconds: int) -> PtzCommand:
    return _value12(CRUISE_DWELL, group, "seconds", seconds)


def cruise_start(group: int) -> PtzCommand:
    """Start a cruise; stop it with `ptz_stop()`."""
    return PtzCommand(CRUISE_START, data1=_group(group))


def scan_start(group: int) -> PtzCommand:
    """Start auto-scan; stop it with `ptz_stop()`."""
    return PtzCommand(SCAN, data1=_group(group), data2=0)


def scan_left_limit(group: int) -> PtzCommand:
    return PtzCommand(SCAN, data1=_group(group), data2=1)


def scan_right_limit(group: int) -> PtzCommand:
    return PtzCommand(SCAN, data1=_group(group), data2=2)


def scan_speed(group: int, speed: int) -> PtzCommand:
    return _value12(SCAN_SPEED, group, "speed", speed)


def aux_on(n: int) -> PtzCommand:
    """Switch auxiliary device n on (1 = wiper)."""
    return PtzCommand(AUX_ON, data1=_check("aux", n, 1, 0xFF))


def aux_off(n: int) -> PtzCommand:
    return PtzCommand(AUX_OFF, data1=_check("aux", n, 1, 0xFF))
