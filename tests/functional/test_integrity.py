"""The scheduled checksum check finds a changed or missing recording file and says so where
archivists and operators look: the log, /metrics and the recording's access log."""

from __future__ import annotations

import hashlib

import aiohttp

from server.app import DATABASE, INTEGRITY
from server.recordings import (
    access_log,
    add_file,
    close_file,
    mark_ready,
    start_recording,
    stop_recording,
)
from server.store.models import utcnow


async def test_the_scheduled_check_reports_changed_and_missing_files(node) -> None:  # type: ignore[no-untyped-def]
    await node.schedule("kiem-tra")
    root = node.config.data_dir / "recordings"
    async with node.app[DATABASE].session() as db, db.begin():
        recording = await start_recording(db, "kiem-tra", by_account_id=None)
        recording_id = recording.id
        for name in ("a.mkv", "b.mkv"):
            path = root / str(recording_id) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode() * 1000)
            made = await add_file(
                db,
                recording_id,
                kind="track",
                segment=1,
                path=f"{recording_id}/{name}",
                participant_name="Xã Một",
                media_kind="video",
                codec="VP8",
            )
            data = path.read_bytes()
            await close_file(
                db, made.id, size=len(data), sha256=hashlib.sha256(data).hexdigest(), duration=1.0
            )
        await stop_recording(db, recording_id, utcnow())
        await mark_ready(db, recording_id)
    check = node.app[INTEGRITY]

    assert await check.run_once() == (1, 0)
    changed = root / str(recording_id) / "a.mkv"
    data = bytearray(changed.read_bytes())
    data[10] ^= 0xFF
    changed.write_bytes(bytes(data))
    (root / str(recording_id) / "b.mkv").unlink()
    assert await check.run_once() == (1, 2)

    async with node.app[DATABASE].session() as db:
        entries = await access_log(db, recording_id)
    assert [e.action.value for e in entries].count("verify") == 2
    assert all(e.address == "scheduled check" for e in entries)
    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
        text = await response.text()
    assert "giaoban_integrity_checks_total 2.0" in text
    assert "giaoban_integrity_mismatches_total 2.0" in text
