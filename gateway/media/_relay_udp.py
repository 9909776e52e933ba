"""Batched UDP I/O for the relay's hot path: ``recvmmsg(2)``/``sendmmsg(2)`` through ctypes.

One system call moves a whole batch of datagrams, into and out of buffers allocated once:

* :class:`RecvBatch` — one per relay, shared by every UDP input: ``slots`` receive slots of
  ``slot`` bytes (64 KiB, so no datagram is ever truncated) in one anonymous mapping (pages are
  committed only when touched). A batch is relayed before the next socket is read, so one set
  of buffers serves all streams.
* :class:`SendBatch` — one per UDP output: a 3-part ``iovec`` per slot — bytes 0–7 of the
  received packet, the output's own 4-byte SSRC, bytes 12..end — so the SSRC rewrite of RFC 3550
  §5.1 (a relay that re-originates a stream uses its own SSRC; GB/T 28181 ``y=``) copies nothing
  in user space. Only the third part's lengths change per batch, set by one strided assignment.
  Where the kernel has UDP GSO (``UDP_SEGMENT``, Linux 4.18+), each run of equal-size packets
  (a camera frame) goes down the send path as one message and is cut into datagrams below it.

Header fields of a whole batch are read as strided slices of the receive mapping (``view[2::slot]``
is every packet's sequence-number high byte), so per-packet work stays a few int operations.
:func:`load_mmsg` returns ``None`` where libc lacks these calls (non-Linux); the relay then falls
back to one ``recvfrom``/``sendmsg`` per packet.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct
import sys
from typing import Any

_EAGAIN_LIKE = frozenset((11, 35))  # EAGAIN/EWOULDBLOCK on Linux, macOS


class Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):  # glibc <bits/socket.h>
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint))


MMSG_SIZE = ctypes.sizeof(Mmsghdr)
_IOV_SIZE = ctypes.sizeof(Iovec)
_NAME_SIZE = 32  # room for sockaddr_in6 (28 bytes)

# UDP GSO (Linux <netinet/udp.h>, <linux/udp.h>): a cmsghdr {size_t len; int level, type} and a
# u16 segment size, padded to 8 bytes.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_CMSG_HEAD = struct.Struct("@Nii")
_CMSG_LEN = _CMSG_HEAD.size + 2
_CMSG_SPACE = (_CMSG_LEN + 7) & ~7
_GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.x raised it
_GSO_MAX_BYTES = 65000  # under the 65,507-byte UDP payload limit


class Mmsg:
    """The two libc functions, typed once."""

    __slots__ = ("recvmmsg", "sendmmsg")

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.recvmmsg: Any = libc.recvmmsg
        self.recvmmsg.argtypes = (
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        )
        self.recvmmsg.restype = ctypes.c_int
        self.sendmmsg: Any = libc.sendmmsg
        self.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        self.sendmmsg.restype = ctypes.c_int


def load_mmsg() -> Mmsg | None:
    """libc's ``recvmmsg``/``sendmmsg``, or ``None`` where they do not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return Mmsg(ctypes.CDLL(None, use_errno=True))
    except (OSError, AttributeError):
        return None


def last_errno() -> int:
    return ctypes.get_errno()


def is_again(err: int) -> bool:
    return err in _EAGAIN_LIKE


class RecvBatch:
    """Receive slots shared by all UDP inputs of one relay (see the module docstring)."""

    __slots__ = (
        "_hdrs",
        "_hdrs_addr",
        "_iov",
        "_lens",
        "_mem",
        "_names",
        "_recvmmsg",
        "base",
        "names",
        "slot",
        "slots",
        "view",
    )

    def __init__(self, mmsg: Mmsg, slots: int = 64, slot: int = 65536) -> None:
        self.slots, self.slot = slots, slot
        self._recvmmsg = mmsg.recvmmsg
        self._mem = mmap.mmap(-1, slots * slot)
        self.view = memoryview(self._mem)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self._names = (ctypes.c_char * (slots * _NAME_SIZE))()
        names_addr = ctypes.addressof(self._names)
        self.names = memoryview(self._names).cast("B")
        self._iov = (Iovec * slots)()
        self._hdrs = (Mmsghdr * slots)()
        for i in range(slots):
            self._iov[i].iov_base = self.base + i * slot
            self._iov[i].iov_len = slot
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name = names_addr + i * _NAME_SIZE
            hdr.msg_namelen = _NAME_SIZE
            hdr.msg_iov = ctypes.addressof(self._iov[i])
            hdr.msg_iovlen = 1
        self._hdrs_addr = ctypes.addressof(self._hdrs)
        words = memoryview(self._hdrs).cast("B").cast("I")
        self._lens = words[Mmsghdr.msg_len.offset // 4 :: MMSG_SIZE // 4]

    name_size = _NAME_SIZE

    def recv(self, fd: int) -> int:
        """Datagrams read into slots 0..n-1 (0 when none is waiting; -1 on another error)."""
        return int(self._recvmmsg(fd, self._hdrs_addr, self.slots, socket.MSG_DONTWAIT, None))

    def lengths(self, n: int) -> list[int]:
        return self._lens[:n].tolist()

    def column(self, offset: int, n: int) -> bytes:
        """Byte ``offset`` of each of the first ``n`` packets."""
        return self.view[offset : n * self.slot : self.slot].tobytes()

    def source(self, i: int) -> bytes:
        """Slot ``i``'s source address as the kernel wrote it (a raw ``sockaddr``)."""
        return self.names[i * _NAME_SIZE : (i + 1) * _NAME_SIZE].tobytes()

    def sources_are(self, pattern: bytes, n: int) -> bool:
        """True if all ``n`` sources equal ``pattern`` (one source repeated ``slots`` times)."""
        size = n * _NAME_SIZE
        return self.names[:size] == pattern[:size]


def gso_cmsg(segment: int) -> bytes:
    """The control message asking for UDP GSO with ``segment``-byte datagrams (``udp(7)``)."""
    data = _CMSG_HEAD.pack(_CMSG_LEN, _SOL_UDP, _UDP_SEGMENT) + segment.to_bytes(2, sys.byteorder)
    return data.ljust(_CMSG_SPACE, b"\0")


def gso_supported(sock: socket.socket) -> bool:
    """True if the kernel knows ``UDP_SEGMENT`` (Linux 4.18+). Older kernels would ignore the
    control message and send one oversized datagram, so this is asked before it is used."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)
    except OSError:
        return False
    return True


Runs = tuple[list[int], list[int], list[int]]
"""``(starts, counts, sizes)``: slot ``starts[k]`` and the ``counts[k] - 1`` after it are
``sizes[k]`` bytes long, except the last, which may be shorter."""


def gso_runs(lengths: list[int]) -> Runs:
    """Split a batch into ``UDP_SEGMENT`` messages: runs of equal-size packets, each closed by
    at most one shorter packet (a camera frame: full packets, then its remainder), within the
    kernel's limits of 64 segments and 64 KiB per message."""
    starts: list[int] = []
    counts: list[int] = []
    sizes: list[int] = []
    n = len(lengths)
    i = 0
    while i < n:
        size = lengths[i]
        cap = min(n, i + min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // max(size, 1)))
        j = i + 1
        while j < cap and lengths[j] == size:
            j += 1
        if j < cap and lengths[j] < size:
            j += 1
        starts.append(i)
        counts.append(j - i)
        sizes.append(size)
        i = j
    return starts, counts, sizes


class SendBatch:
    """One UDP output's send vectors over the shared receive slots (see the module docstring).

    With ``gso``, :meth:`send_runs` sends each run of :func:`gso_runs` as one ``sendmmsg`` entry
    carrying a ``UDP_SEGMENT`` control message (Linux UDP GSO): the kernel walks its send path
    once per run instead of once per packet, about a third of the cost per packet measured on
    loopback. The receiver still gets one datagram per RTP packet.
    """

    __slots__ = (
        "_addr",
        "_gctl",
        "_ghdrs",
        "_gsize",
        "_gwords",
        "_hdrs",
        "_iov",
        "_iov_addr",
        "_len3",
        "_sendmmsg",
        "_ssrc",
        "gso",
        "slots",
    )

    def __init__(self, mmsg: Mmsg, rx: RecvBatch, ssrc: int, *, gso: bool = False) -> None:
        slots, slot = rx.slots, rx.slot
        self.slots = slots
        self._sendmmsg = mmsg.sendmmsg
        self._ssrc = ctypes.create_string_buffer(ssrc.to_bytes(4, "big"), 4)
        ssrc_addr = ctypes.addressof(self._ssrc)
        self._iov = (Iovec * (3 * slots))()
        self._iov_addr = ctypes.addressof(self._iov)
        self._hdrs = (Mmsghdr * slots)()
        for i in range(slots):
            at = rx.base + i * slot
            self._iov[3 * i].iov_base, self._iov[3 * i].iov_len = at, 8
            self._iov[3 * i + 1].iov_base, self._iov[3 * i + 1].iov_len = ssrc_addr, 4
            self._iov[3 * i + 2].iov_base = at + 12
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_iov = self._iov_addr + 3 * i * _IOV_SIZE
            hdr.msg_iovlen = 3  # msg_name stays NULL: the output socket is connected
        self._addr = ctypes.addressof(self._hdrs)
        # iovec k of slot i is size_t pair 2(3i+k); the third part's length is word 6i+5.
        self._len3 = (ctypes.c_size_t * (6 * slots)).from_buffer(self._iov)
        self.gso = gso
        # GSO entries: msg_iov/msg_iovlen are words 2 and 3 of each entry; each entry has its
        # own control buffer, a cmsghdr whose u16 payload (the segment size) is u16 8 of 12.
        self._ghdrs = (Mmsghdr * slots)()
        self._gctl = ctypes.create_string_buffer(_CMSG_SPACE * slots)
        ctl = ctypes.addressof(self._gctl)
        for k in range(slots):
            hdr = self._ghdrs[k].msg_hdr
            hdr.msg_control, hdr.msg_controllen = ctl + k * _CMSG_SPACE, _CMSG_SPACE
            ctypes.memmove(ctl + k * _CMSG_SPACE, gso_cmsg(0), _CMSG_SPACE)
        self._gwords = (ctypes.c_size_t * (MMSG_SIZE // 8 * slots)).from_buffer(self._ghdrs)
        self._gsize = (ctypes.c_uint16 * (_CMSG_SPACE // 2 * slots)).from_buffer(self._gctl)

    def set_tails(self, n: int, tail_lengths: list[int]) -> None:
        """The lengths of bytes 12.. of the first ``n`` packets, before sending them."""
        self._len3[5 : 6 * n : 6] = tail_lengths  # type: ignore[assignment]

    def send(self, fd: int, start: int, n: int) -> int:
        """``sendmmsg`` of slots ``start``..n-1, one entry per packet.

        Returns how many went out, or -1 (see :func:`last_errno`).
        """
        return int(self._sendmmsg(fd, self._addr + start * MMSG_SIZE, n - start, 0))

    def send_runs(self, fd: int, runs: Runs) -> int:
        """``sendmmsg`` of one ``UDP_SEGMENT`` entry per run; returns the packets that went
        out, or -1 if none did (see :func:`last_errno`)."""
        starts, counts, sizes = runs
        k = len(starts)
        word = MMSG_SIZE // 8
        base, step = self._iov_addr, 3 * _IOV_SIZE
        self._gwords[2 : word * k : word] = [base + step * i for i in starts]
        self._gwords[3 : word * k : word] = [3 * c for c in counts]
        self._gsize[8 : _CMSG_SPACE // 2 * k : _CMSG_SPACE // 2] = sizes  # type: ignore[assignment]
        sent = int(self._sendmmsg(fd, ctypes.addressof(self._ghdrs), k, 0))
        if sent == k:
            return sum(counts)
        return sum(counts[:sent]) if sent > 0 else -1
