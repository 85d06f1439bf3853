"""server/recordings.py against both databases: lifecycle, one active per room, segments,
search, metadata, access log, retention, deletion, verify, who may see a recording."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from server import accounts, recording_fields, recordings
from server.errors import AlreadyExists, BadRequest, Conflict, NotFound, RoomEnded
from server.recordings import Mismatch
from server.room_records import create_room, end_room
from server.store.db import Database
from server.store.models import (
    AccessLevel,
    Account,
    Recording,
    RecordingAccess,
    RecordingFile,
    RecordingState,
)

PASSWORD = "mật khẩu đủ dài"
# Cheap parameters keep the suite fast (see test_accounts.py).
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SOON = datetime.now(UTC) + timedelta(days=1)
DIGEST = "ab" * 32
T = TypeVar("T")


async def _in(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with database.session() as session, session.begin():
        return await work(session)


@dataclass
class World:
    database: Database
    admin: Account
    host: Account
    other_host: Account
    member: Account
    archivist: Account


@pytest.fixture
async def world(database: Database) -> World:
    """Accounts of each role and two rooms of `host`: `giao-ban` and `so-y-te`."""

    async def make(s: AsyncSession) -> World:
        made = {
            name: await accounts.create_account(s, name, PASSWORD, role=role, hasher=FAST)
            for name, role in [
                ("admin", "admin"),
                ("host", "host"),
                ("other", "host"),
                ("member", "member"),
                ("archivist", "archivist"),
            ]
        }
        for slug, title in [
            ("giao-ban", "Giao ban tuần: Họp Ủy ban nhân dân tỉnh"),
            ("so-y-te", "Sở Y tế: phòng chống dịch"),
        ]:
            await create_room(
                s,
                made["host"],
                slug=slug,
                title=title,
                starts_at=SOON,
                duration_minutes=60,
                mode="discussion",
                lobby=True,
            )
        return World(
            database,
            made["admin"],
            made["host"],
            made["other"],
            made["member"],
            made["archivist"],
        )

    return await _in(database, make)


async def _start(world: World, slug: str = "giao-ban", **kw: Any) -> Recording:
    return await _in(
        world.database,
        lambda s: recordings.start_recording(s, slug, by_account_id=world.host.id, **kw),
    )


async def _call(world: World, name: str, *args: Any, **kw: Any) -> Any:
    function = getattr(recordings, name)
    return await _in(world.database, lambda s: function(s, *args, **kw))


async def _file(world: World, recording_id: int, path: str, **kw: Any) -> RecordingFile:
    kw.setdefault("kind", "track")
    kw.setdefault("segment", 1)
    kw.setdefault("media_kind", "audio")
    return await _call(world, "add_file", recording_id, path=path, **kw)


# --- lifecycle -------------------------------------------------------------------------------


async def test_a_recording_goes_from_recording_to_ready(world: World) -> None:
    started = await _start(
        world,
        chair_site=("79", "Thành phố Hồ Chí Minh"),
        sites=[("79", "Thành phố Hồ Chí Minh"), ("26734", "Phường Sài Gòn")],
    )
    assert started.state is RecordingState.RECORDING
    assert started.title == "Giao ban tuần: Họp Ủy ban nhân dân tỉnh"
    assert (started.chair_site_code, started.chair_site_name) == ("79", "Thành phố Hồ Chí Minh")
    assert started.segments == 1 and started.access_level is AccessLevel.INTERNAL
    audio = await _file(
        world,
        started.id,
        f"{started.id}/s01-001-an-main-audio.mkv",
        track_id="t1",
        participant_name="Nguyễn Văn An",
        site_code="26734",
        codec="audio/opus",
    )
    await _call(world, "close_file", audio.id, size=1234, sha256=DIGEST, duration=61.5)
    with pytest.raises(Conflict, match="already closed"):
        await _call(world, "close_file", audio.id, size=1, sha256=DIGEST, duration=1.0)
    with pytest.raises(Conflict, match="not processing"):
        await _call(world, "set_progress", started.id, 10)

    stop_at = started.started_at + timedelta(minutes=30)
    stopped = await _call(world, "stop_recording", started.id, stop_at)
    assert stopped.state is RecordingState.PROCESSING and stopped.duration == timedelta(minutes=30)
    await _call(world, "set_progress", started.id, 40)
    with pytest.raises(BadRequest):
        await _call(world, "set_progress", started.id, 101)
    composite = await _file(world, started.id, f"{started.id}/composite.webm", kind="composite")
    await _call(world, "close_file", composite.id, size=99, sha256="cd" * 32, duration=1800.0)
    ready = await _call(world, "mark_ready", started.id)
    assert ready.state is RecordingState.READY and ready.processing_progress == 100

    full = await _call(world, "get_recording", started.id)
    assert full.room.slug == "giao-ban"
    assert [(f.kind, f.media_kind, f.site_code, f.size_bytes, f.sha256) for f in full.files] == [
        ("track", "audio", "26734", 1234, DIGEST),
        ("composite", None, None, 99, "cd" * 32),
    ]
    assert full.files[0].participant_name == "Nguyễn Văn An"
    assert full.files[0].closed_at is not None and full.files[0].duration_seconds == 61.5
    assert recording_fields.sites_of(full) == [
        ("79", "Thành phố Hồ Chí Minh"),
        ("26734", "Phường Sài Gòn"),
    ]
    with pytest.raises(Conflict):
        await _call(world, "stop_recording", started.id, stop_at)
    with pytest.raises(Conflict, match="ready"):
        await _file(world, started.id, f"{started.id}/late.mkv")


async def test_one_recording_going_on_per_room(world: World) -> None:
    first = await _start(world)
    with pytest.raises(Conflict, match="already being recorded"):
        await _start(world)
    other_room = await _start(world, "so-y-te")  # another room is no conflict
    assert other_room.id != first.id
    await _call(world, "mark_interrupted", first.id, "worker lost")
    with pytest.raises(Conflict):  # interrupted is still going on
        await _start(world)
    active = await _call(world, "active_recording", "giao-ban")
    assert active is not None and active.id == first.id

    await _call(world, "stop_recording", first.id, datetime.now(UTC))
    assert await _call(world, "active_recording", "giao-ban") is None
    second = await _start(world)
    assert second.id != first.id


async def test_the_database_holds_one_active_recording_per_room(world: World) -> None:
    # Two nodes checking at once both see none: the partial unique index refuses the second.
    first = await _start(world)
    with pytest.raises(IntegrityError):
        async with world.database.session() as s, s.begin():
            s.add(
                Recording(
                    room_id=first.room_id,
                    title="x",
                    state=RecordingState.INTERRUPTED,
                    started_at=datetime.now(UTC),
                )
            )
    # Finished ones are not held to it.
    async with world.database.session() as s, s.begin():
        s.add(Recording(room_id=first.room_id, title="x", state=RecordingState.READY))


async def test_start_needs_a_room_that_has_not_ended(world: World) -> None:
    with pytest.raises(NotFound):
        await _start(world, "khong-co")
    await _in(world.database, lambda s: end_room(s, None, "so-y-te"))
    with pytest.raises(RoomEnded):
        await _start(world, "so-y-te")


async def test_interrupted_then_resumed_as_new_segments(world: World) -> None:
    started = await _start(world)
    with pytest.raises(Conflict):  # only an interrupted recording resumes
        await _call(world, "resume_recording", started.id)
    interrupted = await _call(world, "mark_interrupted", started.id, "worker killed")
    assert interrupted.state is RecordingState.INTERRUPTED
    assert interrupted.failure_reason == "worker killed"
    again = await _call(world, "mark_interrupted", started.id, "heartbeat lost")
    assert again.failure_reason == "heartbeat lost"
    with pytest.raises(BadRequest, match="segment must be 1-1"):
        await _file(world, started.id, "x/s02.mkv", segment=2)

    assert await _call(world, "resume_recording", started.id) == 2
    await _file(world, started.id, "x/s02.mkv", segment=2)
    await _call(world, "mark_interrupted", started.id, "worker killed")
    assert await _call(world, "resume_recording", started.id) == 3
    resumed = await _call(world, "get_recording", started.id)
    assert resumed.state is RecordingState.RECORDING and resumed.segments == 3
    assert resumed.failure_reason is None
    assert [f.segment for f in resumed.files] == [2]


async def test_failed_keeps_the_reason_and_the_files(world: World) -> None:
    started = await _start(world)
    await _file(world, started.id, "f/a.mkv")
    await _call(world, "stop_recording", started.id, datetime.now(UTC))
    failed = await _call(world, "mark_failed", started.id, "composite: out of disk")
    assert failed.state is RecordingState.FAILED
    assert failed.failure_reason == "composite: out of disk"
    with pytest.raises(Conflict):
        await _call(world, "mark_ready", started.id)
    kept = await _call(world, "get_recording", started.id)
    assert [f.path for f in kept.files] == ["f/a.mkv"]
    # Failing while recording sets the stop time.
    second = await _start(world)
    failed_live = await _call(world, "mark_failed", second.id, "disk full")
    assert failed_live.stopped_at is not None


async def test_file_values_are_checked(world: World) -> None:
    started = await _start(world)
    for bad_path in ["/etc/passwd", "../x.mkv", "a/../../x.mkv", "", "a//b.mkv"]:
        with pytest.raises(BadRequest, match="relative"):
            await _file(world, started.id, bad_path)
    with pytest.raises(BadRequest, match="audio or video"):
        await _file(world, started.id, "a.mkv", media_kind="screen")
    with pytest.raises(BadRequest, match="track or composite"):
        await _file(world, started.id, "a.mkv", kind="other")
    with pytest.raises(Conflict, match="not processing"):
        await _file(world, started.id, "c.webm", kind="composite")
    stored = await _file(world, started.id, "a.mkv", media_kind="video", codec="video/VP8")
    with pytest.raises(AlreadyExists):
        await _file(world, started.id, "a.mkv")
    for bad in [
        {"size": -1, "sha256": DIGEST, "duration": 1.0},
        {"size": 1, "sha256": "AB" * 32, "duration": 1.0},
        {"size": 1, "sha256": "ab", "duration": 1.0},
        {"size": 1, "sha256": DIGEST, "duration": -2.0},
    ]:
        with pytest.raises(BadRequest):
            await _call(world, "close_file", stored.id, **bad)
    with pytest.raises(NotFound):
        await _call(world, "close_file", 424242, size=1, sha256=DIGEST, duration=None)
    with pytest.raises(NotFound):
        await _file(world, 424242, "b.mkv")


async def test_sites_that_join_are_added_once(world: World) -> None:
    started = await _start(world, sites=[("79", "TP HCM")])
    await _call(world, "add_sites", started.id, [("26734", "Phường Sài Gòn"), ("79", "khác")])
    found = await _call(world, "get_recording", started.id)
    assert recording_fields.sites_of(found) == [("79", "TP HCM"), ("26734", "Phường Sài Gòn")]


# --- search ----------------------------------------------------------------------------------


async def _catalogue(world: World) -> dict[str, int]:
    """Three finished recordings on known days with metadata; their ids by name."""
    day = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)
    plan: list[tuple[str, str, datetime, Any, list[Any], list[str], str | None]] = [
        (
            "ubnd",
            "giao-ban",
            day,
            ("79", "Thành phố Hồ Chí Minh"),
            [("26734", "Phường Sài Gòn")],
            ["Ngân sách", "quý I"],
            "HS-2025/001",
        ),
        (
            "yte",
            "so-y-te",
            day + timedelta(days=5),
            ("01", "Thành phố Hà Nội"),
            [("00004", "Phường Ba Đình")],
            ["dịch bệnh"],
            None,
        ),
        ("later", "giao-ban", day + timedelta(days=40), None, [], ["ngân sách"], "HS-2025/002"),
    ]
    ids: dict[str, int] = {}
    for name, slug, at, chair, sites, keywords, code in plan:
        rec = await _start(world, slug, chair_site=chair, sites=sites)

        async def finish(s: AsyncSession, rec: Recording = rec, at: datetime = at) -> None:
            stored = await s.get(Recording, rec.id)
            assert stored is not None
            stored.started_at = at
            await recordings.stop_recording(s, rec.id, at + timedelta(hours=1))

        await _in(world.database, finish)
        await _call(
            world,
            "update_metadata",
            rec.id,
            record_code=code,
            retention_until=None,
            access_level="internal",
            keywords=keywords,
        )
        ids[name] = rec.id
    return ids


async def _search(world: World, **kw: Any) -> list[int]:
    found = await _call(world, "search_recordings", **kw)
    return [r.id for r in found]


async def test_search_by_text_with_and_without_diacritics(world: World) -> None:
    ids = await _catalogue(world)
    # Newest first.
    assert await _search(world) == [ids["later"], ids["yte"], ids["ubnd"]]
    assert await _search(world, text="ỦY BAN") == [ids["later"], ids["ubnd"]]
    assert await _search(world, text="uy ban") == [ids["later"], ids["ubnd"]]
    assert await _search(world, text="sở y tế") == [ids["yte"]]
    assert await _search(world, text="SO Y TE") == [ids["yte"]]
    assert await _search(world, text="sợ") == []  # diacritics typed are matched exactly
    # A decomposed (NFD) needle is the same text as the stored NFC title.
    assert await _search(world, text=unicodedata.normalize("NFD", "Họp")) == [
        ids["later"],
        ids["ubnd"],
    ]
    assert await _search(world, text="hs-2025/001") == [ids["ubnd"]]
    assert await _search(world, text="dịch") == [ids["yte"]]  # title and keyword
    assert await _search(world, text="ngân sách") == [ids["later"], ids["ubnd"]]
    assert await _search(world, text="100%") == []  # LIKE wildcards are plain text
    assert await _search(world, text="   ") == [ids["later"], ids["yte"], ids["ubnd"]]


async def test_search_by_keyword_site_and_dates(world: World) -> None:
    ids = await _catalogue(world)
    assert await _search(world, keyword="NGÂN SÁCH") == [ids["later"], ids["ubnd"]]
    assert await _search(world, keyword="ngan sach") == [ids["later"], ids["ubnd"]]
    assert await _search(world, keyword="ngân") == []  # a keyword is matched whole
    assert await _search(world, keyword="quý i") == [ids["ubnd"]]
    assert await _search(world, site_code="79") == [ids["ubnd"]]  # chair unit
    assert await _search(world, site_code="26734") == [ids["ubnd"]]  # participating site
    assert await _search(world, site_code="00004") == [ids["yte"]]
    assert await _search(world, site_code="0000") == []
    march = datetime(2025, 3, 1, tzinfo=UTC)
    april = datetime(2025, 4, 1, tzinfo=UTC)
    assert await _search(world, date_from=march, date_to=april) == [ids["yte"], ids["ubnd"]]
    assert await _search(world, date_from=datetime(2025, 3, 12, tzinfo=UTC)) == [
        ids["later"],
        ids["yte"],
    ]
    assert await _search(world, text="ngân sách", date_to=april) == [ids["ubnd"]]
    yte_room = (await _call(world, "get_recording", ids["yte"])).room_id
    assert await _search(world, room_ids=[yte_room]) == [ids["yte"]]
    assert await _search(world, limit=1, offset=1) == [ids["yte"]]
    with pytest.raises(BadRequest):
        await _search(world, date_from=datetime(2025, 3, 1))  # naive
    with pytest.raises(BadRequest):
        await _search(world, limit=0)


# --- metadata, access log, retention, deletion -----------------------------------------------


async def test_metadata_is_validated(world: World) -> None:
    started = await _start(world)
    other = await _start(world, "so-y-te")

    async def update(recording_id: int = started.id, **kw: Any) -> Recording:
        fields: dict[str, Any] = {
            "record_code": "HS-01",
            "retention_until": date(2035, 12, 31),
            "access_level": "restricted",
            "keywords": "ngân sách, Quý I ,, ngân SÁCH",
        }
        fields.update(kw)
        return await _call(world, "update_metadata", recording_id, **fields)

    updated = await update()
    assert updated.record_code == "HS-01"
    assert updated.retention_until == date(2035, 12, 31)
    assert updated.access_level is AccessLevel.RESTRICTED
    assert recording_fields.keywords_of(updated) == ["ngân sách", "Quý I"]
    assert json.loads(updated.keywords) == ["ngân sách", "Quý I"]
    again = await update(record_code="HS-01")  # its own code is no conflict
    assert again.record_code == "HS-01"
    with pytest.raises(AlreadyExists):
        await update(other.id)
    cleared = await update(record_code="  ", retention_until=None, keywords=[])
    assert cleared.record_code is None and cleared.retention_until is None
    assert recording_fields.keywords_of(cleared) == []
    for bad in [
        {"access_level": "top-secret"},
        {"retention_until": datetime(2030, 1, 1, tzinfo=UTC)},
        {"retention_until": "2030-01-01"},
        {"record_code": "x" * 65},
        {"record_code": "HS\n01"},
        {"keywords": ["a,b"]},
        {"keywords": ["x" * 51]},
        {"keywords": [f"k{n}" for n in range(21)]},
    ]:
        with pytest.raises(BadRequest):
            await update(**bad)
    with pytest.raises(NotFound):
        await update(424242)


async def test_access_log_keeps_who_did_what(world: World) -> None:
    first = await _start(world)
    second = await _start(world, "so-y-te")
    await _call(world, "log_access", first.id, world.archivist.id, "view", "10.0.0.5")
    await _call(world, "log_access", first.id, world.archivist.id, "download", "10.0.0.5")
    await _call(world, "log_access", second.id, world.admin.id, "verify")
    with pytest.raises(BadRequest):
        await _call(world, "log_access", first.id, world.admin.id, "peek")

    entries = await _call(world, "access_log", first.id)
    assert [(e.action, e.account.username, e.address) for e in entries] == [
        ("download", "archivist", "10.0.0.5"),
        ("view", "archivist", "10.0.0.5"),
    ]
    everything = await _call(world, "access_log", limit=2)
    assert [(e.recording_id, e.action) for e in everything] == [
        (second.id, "verify"),
        (first.id, "download"),
    ]


async def test_recordings_past_retention_are_listed(world: World) -> None:
    old = await _start(world)
    await _call(world, "stop_recording", old.id, datetime.now(UTC))
    live = await _start(world, "so-y-te")
    kept = await _start(world)  # giao-ban again: old is no longer going on
    await _call(world, "stop_recording", kept.id, datetime.now(UTC))
    for rec, until in [(old, date(2025, 1, 1)), (live, date(2024, 1, 1)), (kept, date(2025, 6, 1))]:
        await _call(
            world,
            "update_metadata",
            rec.id,
            record_code=None,
            retention_until=until,
            access_level="internal",
            keywords=[],
        )
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    past = await _call(world, "recordings_past_retention", now)
    # `live` is still being recorded; `kept` is due on the day itself, not before.
    assert [r.id for r in past] == [old.id]
    later = await _call(world, "recordings_past_retention", now + timedelta(days=1))
    assert [r.id for r in later] == [old.id, kept.id]


async def test_delete_needs_confirmation_and_is_logged(world: World) -> None:
    rec = await _start(world)
    await _file(world, rec.id, f"{rec.id}/a.mkv")
    await _file(world, rec.id, f"{rec.id}/b.mkv", media_kind="video")
    await _call(
        world,
        "update_metadata",
        rec.id,
        record_code="HS-9",
        retention_until=None,
        access_level="internal",
        keywords=[],
    )
    with pytest.raises(Conflict, match="still being recorded"):
        await _call(world, "delete_recording", rec.id, confirmed=True)
    await _call(world, "stop_recording", rec.id, datetime.now(UTC))
    await _call(world, "log_access", rec.id, world.archivist.id, "view")
    for not_confirmed in (False, "yes", 1):
        with pytest.raises(BadRequest, match="confirmation"):
            await _call(world, "delete_recording", rec.id, confirmed=not_confirmed)

    paths = await _call(
        world,
        "delete_recording",
        rec.id,
        confirmed=True,
        account_id=world.archivist.id,
        address="10.0.0.9",
    )
    assert sorted(paths) == [f"{rec.id}/a.mkv", f"{rec.id}/b.mkv"]
    with pytest.raises(NotFound):
        await _call(world, "get_recording", rec.id)

    async def counts(s: AsyncSession) -> tuple[int, list[tuple[Any, ...]]]:
        files = await s.scalar(select(func.count(RecordingFile.id)))
        log = await s.execute(
            select(
                RecordingAccess.recording_id,
                RecordingAccess.recording_title,
                RecordingAccess.record_code,
                RecordingAccess.action,
                RecordingAccess.address,
            ).order_by(RecordingAccess.id)
        )
        return int(files or 0), [tuple(row) for row in log]

    files, log = await _in(world.database, counts)
    assert files == 0
    title = "Giao ban tuần: Họp Ủy ban nhân dân tỉnh"
    assert log == [
        (None, title, "HS-9", "view", ""),
        (None, title, "HS-9", "delete", "10.0.0.9"),
    ]


def test_search_text_folds_case_and_diacritics() -> None:
    text = recording_fields.search_text("Họp  ĐẢNG ủy", "HS-1", ["Ngân sách", "Quý I"])
    assert recording_fields.needle("đảng ỦY") in text
    assert recording_fields.needle("dang uy") in text
    assert recording_fields.needle("hợp") not in text
    assert recording_fields.keyword_needle("ngan sach") in text
    assert recording_fields.keyword_needle("ngân") not in text
    assert recording_fields.keyword_needle("sách|quý i") not in text


# --- checksums -------------------------------------------------------------------------------


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # a little over two 1 MiB chunks
    (tmp_path / "f.bin").write_bytes(data)
    assert recordings.sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert recordings.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


async def test_verify_finds_a_changed_byte_and_a_missing_file(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "recordings"
    rec = await _start(world)
    stored: dict[str, RecordingFile] = {}
    digests: dict[str, str] = {}
    for name in ("good", "changed", "missing", "open"):
        path = root / str(rec.id) / f"{name}.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 1000)
        stored[name] = await _file(world, rec.id, f"{rec.id}/{name}.mkv")
        digests[name] = recordings.sha256_file(path)
        if name != "open":
            await _call(
                world,
                "close_file",
                stored[name].id,
                size=path.stat().st_size,
                sha256=digests[name],
                duration=1.0,
            )
    assert await _call(world, "verify_recording", rec.id, root) == []

    changed = root / str(rec.id) / "changed.mkv"
    data = bytearray(changed.read_bytes())
    data[500] ^= 0x01
    changed.write_bytes(bytes(data))
    (root / str(rec.id) / "missing.mkv").unlink()
    (root / str(rec.id) / "open.mkv").write_bytes(b"still being written")
    caplog.set_level("WARNING", logger="server.recordings")

    found = await _call(world, "verify_recording", rec.id, root)
    by_id = {m.file_id: m for m in found}
    assert set(by_id) == {stored["changed"].id, stored["missing"].id}
    assert by_id[stored["changed"].id] == Mismatch(
        stored["changed"].id,
        f"{rec.id}/changed.mkv",
        digests["changed"],
        hashlib.sha256(bytes(data)).hexdigest(),
        "changed",
    )
    assert by_id[stored["missing"].id].reason == "missing"
    assert by_id[stored["missing"].id].actual is None
    assert sum("checksum mismatch" in r.getMessage() for r in caplog.records) == 2


# --- who may see a recording -------------------------------------------------------------------


async def test_who_may_see_a_recording(world: World) -> None:
    rec = await _start(world)
    see = recordings.can_see_recording
    assert rec.access_level is AccessLevel.INTERNAL
    assert see(world.archivist, rec, is_host_of_room=False)
    assert see(world.admin, rec, is_host_of_room=False)
    assert see(world.host, rec, is_host_of_room=True)  # the room's host, own meeting
    assert not see(world.other_host, rec, is_host_of_room=False)  # a host of other meetings
    assert not see(world.member, rec, is_host_of_room=False)
    assert not see(None, rec, is_host_of_room=False)
    world.archivist.disabled = True
    assert not see(world.archivist, rec, is_host_of_room=False)
    world.archivist.disabled = False
    world.host.disabled = True
    assert not see(world.host, rec, is_host_of_room=True)
    world.host.disabled = False


@pytest.mark.parametrize(
    ("level", "host_sees"),
    [
        (AccessLevel.INTERNAL, True),
        (AccessLevel.RESTRICTED, True),
        (AccessLevel.CONFIDENTIAL, False),  # mật: archivists and admins only
    ],
)
async def test_who_may_see_a_recording_by_access_level(
    world: World, level: AccessLevel, host_sees: bool
) -> None:
    rec = await _start(world)
    await _call(
        world,
        "update_metadata",
        rec.id,
        record_code=None,
        retention_until=None,
        access_level=level.value,
        keywords=[],
    )
    rec = await _call(world, "get_recording", rec.id)
    assert rec.access_level is level
    see = recordings.can_see_recording
    assert see(world.archivist, rec, is_host_of_room=False)
    assert see(world.admin, rec, is_host_of_room=False)
    # An archivist or admin who also hosts the room still sees it.
    assert see(world.admin, rec, is_host_of_room=True)
    assert see(world.host, rec, is_host_of_room=True) is host_sees
    assert not see(world.other_host, rec, is_host_of_room=False)
    assert not see(world.member, rec, is_host_of_room=False)
    # A host's search keeps to the same rule.
    found = await _search(world, room_ids=[rec.room_id], access_levels=recordings.HOSTS_SEE_LEVELS)
    assert found == ([rec.id] if host_sees else [])
    assert await _search(world, room_ids=[rec.room_id]) == [rec.id]
    assert await _search(world, access_levels=[level]) == [rec.id]


async def test_chair_unit_and_participating_sites_come_from_the_meeting(world: World) -> None:
    """The chair unit is the starting host's site; at the stop, the sites of everyone who
    attended while it recorded (not those who had left before) join the participating sites."""
    from server import attendance
    from server.store.models import Site, SiteLevel

    async def setup(s: AsyncSession) -> None:
        province = Site(code="01", name="Tỉnh Thử", level=SiteLevel.PROVINCE)
        s.add(province)
        await s.flush()
        host = await s.get(Account, world.host.id)
        assert host is not None
        host.site_id = province.id

    await _in(world.database, setup)
    now = datetime.now(UTC)

    async def stay(code: str, name: str, joined: datetime, left: datetime | None) -> None:
        async def enter(s: AsyncSession) -> None:
            stay_id = await attendance.record_entry(
                s,
                "giao-ban",
                account_id=None,
                token_id=f"link-{code}",
                name=f"Đại biểu {name}",
                site_code=code,
                site_name=name,
                role="member",
                at=joined,
            )
            if left is not None:
                await attendance.record_exit(s, stay_id, left)

        await _in(world.database, enter)

    await stay("01-900", "Xã Đã Về", now - timedelta(hours=2), now - timedelta(hours=1))
    await stay("01-001", "Xã Một", now - timedelta(minutes=5), None)
    started = await _start(world)
    assert (started.chair_site_code, started.chair_site_name) == ("01", "Tỉnh Thử")
    await stay("01-002", "Xã Hai", datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=1))
    await _call(world, "stop_recording", started.id, datetime.now(UTC) + timedelta(minutes=1))
    stopped = await _call(world, "get_recording", started.id)
    assert recording_fields.sites_of(stopped) == [("01-001", "Xã Một"), ("01-002", "Xã Hai")]
    found = await _in(world.database, lambda s: recordings.search_recordings(s, site_code="01-002"))
    assert [r.id for r in found] == [started.id]
