"""Which charset to write a device's bodies in: the one its own bodies really use.

Reference §8.3: many devices declare ``GB2312`` and send UTF-8, or the other way round, and
answer only bodies written the way they write theirs. The gateway answers a device in the
charset its bodies really used, under the encoding name its prolog declared; until it has seen
one, in GB2312. A body in plain ASCII tells nothing by its bytes, but its prolog still says
what the device writes: while nothing better is known, that declaration is taken (a device that
only ever sends ASCII names under ``encoding="UTF-8"`` is answered in UTF-8, not GB2312).
"""

from __future__ import annotations

from gateway.manscdp import Decoded, Message, encode
from gateway.model import Device

__all__ = ["DEFAULT_CHARSET", "body_charset", "declared_charset", "encode_for"]

DEFAULT_CHARSET = "GB2312"


def body_charset(decoded: Decoded) -> tuple[str, str] | None:
    """(the charset a body really used, the name its prolog declared), as the gateway will
    write back: anything not UTF-8 is the GB family; ``None`` when the body tells nothing."""
    if decoded.charset is None:
        return None
    charset = "UTF-8" if decoded.charset == "UTF-8" else DEFAULT_CHARSET
    return charset, decoded.declared or charset


def declared_charset(decoded: Decoded) -> tuple[str, str] | None:
    """For a plain-ASCII body (:func:`body_charset` is ``None``): (the charset its prolog
    declares, as the gateway will write it, the declared name); ``None`` when it declares
    none."""
    declared = decoded.declared
    if decoded.charset is not None or not declared:
        return None
    utf8 = declared.replace("-", "").replace("_", "").upper() == "UTF8"
    return ("UTF-8" if utf8 else DEFAULT_CHARSET), declared


def encode_for(dev: Device, msg: Message) -> bytes:
    """``msg`` as a body for ``dev``: in its charset, under its declared name, in the 2022
    form when the device registered as version 3.x (GB/T 28181-2022)."""
    charset = dev.charset or DEFAULT_CHARSET
    return encode(
        msg,
        charset,
        declare=dev.declared_charset or charset,
        gb2022=dev.gb_version.startswith("3"),
    )
