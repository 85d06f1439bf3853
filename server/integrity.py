"""The scheduled checksum check of the archive: every finished recording whose files live on
this node is re-read and compared with the SHA-256 taken when each file closed.

A mismatch is logged, counted in /metrics and written to the recording's access log as a
verification by the node (no account), so archivists see it where they look."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy import select

from server import recordings
from server.metrics import Metrics
from server.store.db import Database
from server.store.models import Recording, RecordingState

log = logging.getLogger(__name__)

SCHEDULED = "scheduled check"


class IntegrityCheck:
    """Verifies the recordings under `root` every `interval` seconds (0: never)."""

    def __init__(self, database: Database, root: Path, metrics: Metrics, interval: float) -> None:
        self._database = database
        self._root = root
        self._metrics = metrics
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.ensure_future(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("scheduled checksum check failed; trying again next time")

    async def run_once(self) -> tuple[int, int]:
        """Verify every ready or failed recording kept on this node; (checked, mismatches)."""
        async with self._database.session() as db:
            ids = (
                (
                    await db.execute(
                        select(Recording.id).where(
                            Recording.state.in_((RecordingState.READY, RecordingState.FAILED))
                        )
                    )
                )
                .scalars()
                .all()
            )
        checked = mismatched = 0
        for recording_id in ids:
            # In a cluster each node keeps its own recordings: others' are not "missing" here.
            if not (self._root / str(recording_id)).is_dir():
                continue
            async with self._database.session() as db, db.begin():
                mismatches = await recordings.verify_recording(db, recording_id, self._root)
                await recordings.log_access(db, recording_id, None, "verify", SCHEDULED)
            checked += 1
            mismatched += len(mismatches)
            self._metrics.integrity_checks.inc()
            if mismatches:
                self._metrics.integrity_mismatches.inc(len(mismatches))
                log.error(
                    "recording %d: %d file(s) failed the scheduled checksum check: %s",
                    recording_id,
                    len(mismatches),
                    ", ".join(f"{m.path} ({m.reason})" for m in mismatches),
                )
        log.info("scheduled checksum check: %d recordings, %d mismatches", checked, mismatched)
        return checked, mismatched
