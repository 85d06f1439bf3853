"""One upstream packet to every down track: the forwarding loop, in C where it is built.

At 64 subscribers of one publisher, the per-subscriber Python of the forwarding path (header,
numbering, history, SRTP protect and send calls) was a third of the node's CPU, measured with
perf: as much as the kernel's sendto. `server/sfu/_fanout.c` runs that loop in C for every
down track in the common case: started, not waiting for a keyframe, the publisher's payload
type already mapped, its packet tail already built, a direct UDP path that is connected, has
nothing queued and was looked at within ForwardingSender.PATH_CHECK_PACKETS packets. Any other
down track goes through DownTrack.forward, the Python reference, unchanged; so do down tracks
of other classes (the tests' stand-ins). The C loop writes the same bytes, keeps the same NACK
history, numbering, sender-report counts and statistics (tests/unit/test_fanout.py compares
both paths packet by packet).

Without a C compiler at install time the extension is not built (pyproject.toml marks it
optional), or with GIAOBAN_FORWARDING_LOOP=python it is not used: then `forward` below runs
DownTrack.forward for each down track, and numbering and history are the Python classes. The
choice is made once, at import: the classes of every down track depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.sfu.up_track import Outgoing

# Read here, not from Config: DownTrack's base class is chosen when this module is imported.
# Config.from_env validates the value and `giaoban serve --help` lists it.
WANTED = os.environ.get("GIAOBAN_FORWARDING_LOOP", "c").strip().lower() or "c"

_fanout: Any = None
if WANTED != "python":
    try:
        from server.sfu import _fanout
    except ImportError:  # not built
        _fanout = None

NATIVE = _fanout is not None


class _PythonLeg:
    """DownTrack's base where the C module is not built: plain attributes."""


class _PythonPath:
    """ForwardingSender's base where the C module is not built: no direct sending."""

    def _set_direct(self, sock: object, fd: int, remote: object, context: int) -> None:
        """Nothing sends but send_now here."""


def _python_forward(down_tracks: Iterable[Any], out: Outgoing) -> list[Awaitable[None]] | None:
    """forward() in Python: DownTrack.forward for each down track."""
    slow = None
    for down in tuple(down_tracks):
        pending = down.forward(out)
        if pending is not None:
            if slow is None:
                slow = []
            slow.append(pending)
    return slow


if _fanout is not None:
    Leg: type = _fanout.Leg
    Path: type = _fanout.Path
    StreamNumbering: type | None = _fanout.StreamNumbering
    PacketHistory: type | None = _fanout.PacketHistory
    forward = _fanout.forward
    configure = _fanout.configure
    set_send_filter = _fanout.set_send_filter  # loss tests only
    NUMBERING_LIMITS: tuple[int, int] | None = (_fanout.MAX_LATE, _fanout.MAX_TOO_OLD_IN_A_ROW)
else:
    StreamNumbering = PacketHistory = NUMBERING_LIMITS = None
    Leg = _PythonLeg
    Path = _PythonPath
    forward = _python_forward

    def configure(
        protect: int,
        protect_rtcp: int,
        trailer: int,
        rtcp_trailer: int,
        check: int,
        error: type[Exception],
    ) -> None:
        """Nothing to set up for the Python loop."""

    def set_send_filter(send_filter: Any) -> None:
        """The Python loop sends through Python sockets: loss tests hook those."""


python_forward = _python_forward
