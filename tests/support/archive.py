"""Catalogued recordings with real media files, for the archive's functional and browser tests.

`make_recording` makes a ready recording of a room as the recorder and post-processing would
leave it: track files (a real VP8 Matroska file, as `recording/track_writer.py` writes, or
given bytes) closed with their SHA-256, optionally the H.264 + AAC composite made by
`recording.compose`, and the archival metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from recording.compose import ComposeInput, compose
from server.app import DATABASE
from server.recording_control import RECORDINGS_DIR
from server.recordings import (
    add_file,
    close_file,
    mark_ready,
    start_recording,
    stop_recording,
    update_metadata,
)

if TYPE_CHECKING:
    from tests.conftest import Node

# 08:00 Vietnam time on 1 March 2026.
MARCH_1 = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
FPS = 25


def recordings_root(node: Node) -> Path:
    """The node's recordings folder (`RecordingFile.path` is relative to it)."""
    return node.config.data_dir / RECORDINGS_DIR


def write_mkv(path: Path, seconds: float = 1.0) -> None:
    """`seconds` of a moving test pattern, VP8 in Matroska, as the recorder writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for index in range(round(seconds * FPS)):
            pixels = np.zeros((120, 160, 3), dtype=np.uint8)
            pixels[:, : (index * 6) % 160 + 6] = (255, 128, 0)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


async def make_recording(
    node: Node,
    room: str,
    *,
    title: str | None = None,
    started: datetime = MARCH_1,
    chair: tuple[str, str] | None = None,
    sites: Sequence[tuple[str, str]] = (),
    keywords: str = "",
    record_code: str | None = None,
    retention: date | None = None,
    access_level: str = "internal",
    files: Sequence[tuple[str, bytes | None, str]] = (),
    seconds: float = 1.0,
    composite: str | None = None,
    host: str = "chu-tri",
) -> tuple[int, list[int]]:
    """A ready recording of `room` (hosted by account `host`); (id, file ids in order).

    `files` are track files (relative path, bytes or None for a real `seconds`-long .mkv,
    media kind) written under the recordings folder; `composite` is the relative path of an
    MP4 composite of the video tracks to make with `recording.compose` (catalogued last)."""
    await node.schedule(room, host=host)
    root = recordings_root(node)
    file_ids: list[int] = []
    async with node.app[DATABASE].session() as db, db.begin():
        recording = await start_recording(
            db, room, by_account_id=None, chair_site=chair, sites=sites
        )
        recording.title = title or recording.title
        recording.started_at = started
        for relative, content, media in files:
            path = root / relative
            if content is None:
                write_mkv(path, seconds)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            data = path.read_bytes()
            made = await add_file(
                db,
                recording.id,
                kind="track",
                segment=1,
                path=relative,
                participant_name="Nguyễn Văn An",
                site_code="26734",
                site_name="Xã Tân Phú",
                media_kind=media,
                codec="VP8" if media == "video" else "opus",
            )
            await close_file(
                db,
                made.id,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                duration=seconds,
            )
            file_ids.append(made.id)
        # update_metadata also refreshes the search text for the title set above.
        await update_metadata(
            db,
            recording.id,
            record_code=record_code,
            retention_until=retention,
            access_level=access_level,
            keywords=keywords,
        )
        await stop_recording(db, recording.id, started + timedelta(minutes=45))
        if composite is not None:
            inputs = [
                ComposeInput(path=root / relative, kind="video", start=0.0)
                for relative, content, media in files
                if content is None and media == "video"
            ]
            output = root / composite
            output.parent.mkdir(parents=True, exist_ok=True)
            result = await asyncio.to_thread(compose, inputs, output, width=320, height=240, fps=15)
            data = output.read_bytes()
            made = await add_file(db, recording.id, kind="composite", segment=1, path=composite)
            await close_file(
                db,
                made.id,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                duration=result.duration,
            )
            file_ids.append(made.id)
        await mark_ready(db, recording.id)
        return recording.id, file_ids
