"""The floor under the forwarding figure: what delivering one datagram costs on this machine.

    .venv/bin/python bench/sendto_floor.py [--sockets 64] [--rate 141] [--size 700]

For each of `--rate` rounds a second, one UDP datagram of `--size` bytes goes from each of
`--sockets` sockets to its own receiving socket in one of two other processes (which drain
them with epoll, as the forwarding benchmark's subscriber processes do), over loopback. It
prints the sending thread's CPU µs per datagram: once for the `sendto` alone (on loopback the
sender's CPU also pays for the receiving side and the receiver's wake-up), once with an SRTP
protect before each `sendto` (libsrtp's srtp_protect called as the node calls it, into one
shared buffer; AES-256-GCM as aiortc negotiates; one session per socket). A forwarding node
does at least this per forwarded packet; bench/forwarding.py runs it after its series with the
same N, packet rate and mean packet size, so its µs per packet can be read against a floor
measured in the same run. Between rounds the sender sleeps, as the node does between packets:
on a virtual machine that leaves caches cold for the next round, which the floor includes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import socket
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import pylibsrtp
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

RECEIVER_PROCESSES = 2


def _drain(count: int, ports: mp.Queue, stop: Event) -> None:
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sockets.append(s)
    ports.put([s.getsockname()[1] for s in sockets])
    poller = select.epoll()
    by_fd = {s.fileno(): s for s in sockets}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    while not stop.is_set():
        for fd, _events in poller.poll(0.2):
            try:
                while True:
                    by_fd[fd].recv(4096)
            except BlockingIOError:
                pass


@dataclass
class Floor:
    sendto_us: float  # CPU µs per datagram, sendto alone
    srtp_sendto_us: float  # CPU µs per datagram, SRTP protect then sendto
    rounds: int


def measure(sockets: int, rate: float, size: int, seconds: float = 10.0) -> Floor:
    """Send `rate` rounds a second of one `size`-byte datagram per socket for `seconds`
    (half without, half with SRTP); the sending thread's CPU µs per datagram."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    ports_queue: mp.Queue = ctx.Queue()
    shares = [sockets // RECEIVER_PROCESSES + (i < sockets % RECEIVER_PROCESSES) for i in range(2)]
    receivers = [ctx.Process(target=_drain, args=(n, ports_queue, stop)) for n in shares if n]
    senders: list[tuple[socket.socket, tuple[str, int], pylibsrtp.Session]] = []
    try:
        for process in receivers:
            process.start()
        ports = [port for _ in receivers for port in ports_queue.get(timeout=30)]
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            policy = pylibsrtp.Policy(
                key=os.urandom(44),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
            )
            senders.append((s, ("127.0.0.1", port), pylibsrtp.Session(policy)))
        payload = os.urandom(max(0, size - 12))
        plain, plain_rounds = _paced(senders, payload, rate, seconds / 2, srtp=False)
        protected, protected_rounds = _paced(senders, payload, rate, seconds / 2, srtp=True)
    finally:
        stop.set()
        for process in receivers:
            process.join(5)
            if process.is_alive():
                process.kill()
        for s, _address, _session in senders:
            s.close()
    count = len(senders)
    return Floor(
        sendto_us=1e6 * plain / (plain_rounds * count),
        srtp_sendto_us=1e6 * protected / (protected_rounds * count),
        rounds=plain_rounds + protected_rounds,
    )


def _paced(
    senders: list[tuple[socket.socket, tuple[str, int], pylibsrtp.Session]],
    payload: bytes,
    rate: float,
    seconds: float,
    srtp: bool,
) -> tuple[float, int]:
    cpu = 0.0
    rounds = 0
    data = srtp_ffi.new("char[]", 2048)
    buffer = srtp_ffi.buffer(data)
    length = srtp_ffi.new("int *")
    contexts = [session._srtp[0] for _s, _a, session in senders]
    targets = [(s, address) for s, address, _session in senders]
    start = time.monotonic()
    due = start
    sequence = 0
    while time.monotonic() - start < seconds:
        sequence = (sequence + 1) & 0xFFFF
        packet = bytes([0x80, 96]) + sequence.to_bytes(2, "big") + bytes(8) + payload
        size = len(packet)
        began = time.thread_time()
        if srtp:
            for (s, address), context in zip(targets, contexts, strict=True):
                length[0] = size
                buffer[0:size] = packet
                if srtp_lib.srtp_protect(context, data, length):
                    raise RuntimeError("srtp_protect failed")
                try:
                    s.sendto(buffer[0 : length[0]], address)
                except BlockingIOError:
                    pass
        else:
            for s, address in targets:
                try:
                    s.sendto(packet, address)
                except BlockingIOError:
                    pass
        cpu += time.thread_time() - began
        rounds += 1
        due += 1 / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing the sender like the publisher's packet rate
    return cpu, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=64)
    parser.add_argument("--rate", type=float, default=141.0, help="rounds per second")
    parser.add_argument("--size", type=int, default=700, help="bytes per datagram")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    floor = measure(args.sockets, args.rate, args.size, args.seconds)
    print(
        f"{args.sockets} sockets, {args.rate:g} rounds/s, {args.size} B: sendto "
        f"{floor.sendto_us:.1f} µs per datagram; SRTP protect + sendto "
        f"{floor.srtp_sendto_us:.1f} µs ({floor.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
