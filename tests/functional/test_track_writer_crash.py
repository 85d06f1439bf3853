"""A recorder SIGKILLed mid-recording leaves a file that plays up to a second or two before.

The child process (this module run with `python -m`) records a numbered VP8 stream in real time
and prints the number of each frame once its packets are written; the parent kills it once the
file holds more than three seconds, then decodes what is on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av

from tests.support.media import read_barcode

FPS = 30
SECONDS = 10
KILL_AFTER_FRAMES = 3 * FPS  # on disk before the kill
MAX_LOSS_FRAMES = 2 * FPS  # what the kill may cost
REPO = Path(__file__).resolve().parents[2]


def record(path: Path) -> None:
    """The child: write SECONDS of VP8 at FPS, paced by the wall clock, reporting progress."""
    from recording.track_writer import TrackWriter
    from tests.unit.test_track_writer import RtpSource, video_frames

    source = RtpSource("video/VP8", 90_000)
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    start = time.monotonic()
    for number, frame in enumerate(video_frames(FPS * SECONDS, width=320, height=240)):
        delay = start + number / FPS - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a live source, not synchronisation
        for packet in source.packets(frame):
            writer.write_packet(packet)
        print(number, flush=True)
    writer.close()


def frames_on_disk(path: Path) -> int:
    """How many video packets a reader finds in the (growing) file now; 0 if unreadable yet."""
    try:
        with av.open(str(path)) as container:
            count = 0
            try:
                for packet in container.demux(video=0):
                    count += packet.size > 0
            except av.error.FFmpegError:
                pass  # the tail is being written
            return count
    except (av.error.FFmpegError, OSError):
        return 0


def decode_barcodes(path: Path) -> list[int | None]:
    numbers: list[int | None] = []
    with av.open(str(path)) as container:
        decoder = container.streams.video[0].codec_context
        try:
            for packet in container.demux(video=0):
                numbers += [read_barcode(frame) for frame in decoder.decode(packet)]
        except av.error.FFmpegError:
            pass  # a cut-off last cluster ends the file
    return numbers


def test_killed_recorder_leaves_a_playable_file(tmp_path: Path) -> None:
    path = tmp_path / "camera.webm"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.functional.test_track_writer_crash", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        on_disk = 0
        while on_disk < KILL_AFTER_FRAMES:
            assert child.poll() is None, f"recorder exited early with {child.returncode}"
            assert time.monotonic() < deadline, f"only {on_disk} frames on disk after 30 s"
            time.sleep(0.1)  # polling interval
            on_disk = frames_on_disk(path) if path.exists() else 0
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert child.stdout is not None
    reported = [int(line) for line in child.stdout.read().split()]
    sent = reported[-1] + 1  # frames whose packets the writer had when the kill came
    assert sent < FPS * SECONDS, "the recording finished before the kill"

    numbers = decode_barcodes(path)
    assert numbers, "nothing decodable in the killed recording"
    assert numbers == list(range(len(numbers))), "frames missing or out of order"
    assert numbers[-1] >= sent - MAX_LOSS_FRAMES, (
        f"last decodable frame {numbers[-1]}, but {sent} had been written"
    )


if __name__ == "__main__":
    record(Path(sys.argv[1]))
