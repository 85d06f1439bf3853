"""Stored tables as SQLAlchemy 2 typed declarative models; migrations/ creates them."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import CheckConstraint, ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names are part of the schema: migrations refer to them (SQLite batch mode needs them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime on both databases (SQLite keeps no offset: it is UTC by contract)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SiteLevel(enum.StrEnum):
    CENTRAL = "central"
    PROVINCE = "province"
    DISTRICT = "district"
    COMMUNE = "commune"
    OTHER = "other"


class Role(enum.StrEnum):
    ADMIN = "admin"
    HOST = "host"
    MEMBER = "member"
    ARCHIVIST = "archivist"


def _enum(cls: type[enum.StrEnum], name: str) -> sa.Enum:
    # VARCHAR + CHECK on both databases (no PostgreSQL ENUM type: adding a value stays a
    # plain migration); the values, not the member names, are stored.
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Site(Base):
    """A node of the administrative tree (central → province → [district] → commune)."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[SiteLevel] = mapped_column(_enum(SiteLevel, "site_level"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)

    # lazy="raise": async code loads relations explicitly instead of failing in a lazy load.
    parent: Mapped[Site | None] = relationship(remote_side=[id], lazy="raise")

    def __repr__(self) -> str:
        return f"Site(id={self.id!r}, code={self.code!r})"


class Account(Base):
    """A person who signs in; `username` is stored lower-cased (unique case-insensitively)."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("username = lower(username)", name="username_lower"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role, "account_role"))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=sa.func.now()
    )

    site: Mapped[Site | None] = relationship(lazy="raise")

    def __repr__(self) -> str:  # never the hash
        return f"Account(id={self.id!r}, username={self.username!r}, role={self.role!r})"


class LoginSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored, so a
    copy of the database opens no session."""

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the token
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    user_agent: Mapped[str] = mapped_column(String(200), default="")
    address: Mapped[str] = mapped_column(String(64), default="")

    account: Mapped[Account] = relationship(lazy="raise")


class RoomMode(enum.StrEnum):
    """Who may speak: everyone (discussion), whom the chair lets (conference), only the floor
    holder (training)."""

    DISCUSSION = "discussion"
    CONFERENCE = "conference"
    TRAINING = "training"


class InviteRole(enum.StrEnum):
    HOST = "host"
    MEMBER = "member"


class RoomRecord(Base):
    """A room as scheduled and kept in the store; `server.room.Room` is its live state on a node.

    `slug` is the room's name in links and signaling. State: ended when `ended_at` is set, live
    when `started_at` is set, otherwise upcoming."""

    __tablename__ = "rooms"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    mode: Mapped[RoomMode] = mapped_column(_enum(RoomMode, "room_mode"))
    lobby: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    duration_minutes: Mapped[int] = mapped_column(default=60)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    created_by: Mapped[Account] = relationship(lazy="raise")
    invites: Mapped[list[RoomInvite]] = relationship(
        lazy="raise", cascade="all, delete-orphan", back_populates="room"
    )

    def __repr__(self) -> str:
        return f"RoomRecord(id={self.id!r}, slug={self.slug!r})"


class RoomInvite(Base):
    """One invited site (its accounts, and those of the sites under it) or one invited account."""

    __tablename__ = "room_invites"
    __table_args__ = (
        CheckConstraint("(site_id IS NULL) <> (account_id IS NULL)", name="site_or_account"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    role: Mapped[InviteRole] = mapped_column(_enum(InviteRole, "invite_role"))

    room: Mapped[RoomRecord] = relationship(lazy="raise", back_populates="invites")
    site: Mapped[Site | None] = relationship(lazy="raise")
    account: Mapped[Account | None] = relationship(lazy="raise")


class RoomRemoval(Base):
    """Someone a host removed: that account, or that invitation token, cannot rejoin the room."""

    __tablename__ = "room_removals"
    __table_args__ = (
        CheckConstraint(
            "(account_id IS NOT NULL) OR (token_id IS NOT NULL)", name="account_or_token"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    token_id: Mapped[str | None] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    removed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    """A token a program uses for the REST API (`Authorization: Bearer`), acting as its
    account. Only the SHA-256 of the token is stored; it is shown once when made."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    account: Mapped[Account] = relationship(lazy="raise")


class AttendanceStay(Base):
    """One person's stay in a meeting: from entering to leaving, reconnects merged in.

    Who it was is kept as it was then (name, site, role), so later renames do not rewrite
    the record."""

    __tablename__ = "attendance"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    token_id: Mapped[str | None] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    site_code: Mapped[str | None] = mapped_column(String(32))
    site_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime())
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reconnects: Mapped[int] = mapped_column(default=0, server_default="0")


class ChatMessage(Base):
    """A chat message kept with the meeting: to the whole room, or privately to its hosts."""

    __tablename__ = "chat_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    sender_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL")
    )
    sender_name: Mapped[str] = mapped_column(String(200))
    sender_role: Mapped[str] = mapped_column(String(16))
    to_hosts: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    text: Mapped[str] = mapped_column(String(2000))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class RecordingState(enum.StrEnum):
    """recording → (interrupted → recording)* → processing → ready | failed."""

    RECORDING = "recording"
    INTERRUPTED = "interrupted"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class AccessLevel(enum.StrEnum):
    """The archival access level (mức độ tiếp cận) of a recording."""

    INTERNAL = "internal"
    RESTRICTED = "restricted"
    CONFIDENTIAL = "confidential"


class RecordingFileKind(enum.StrEnum):
    TRACK = "track"  # one published track, remuxed as it arrived
    COMPOSITE = "composite"  # the grid of every track made after the meeting


class MediaKind(enum.StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


class RecordingAction(enum.StrEnum):
    VIEW = "view"
    DOWNLOAD = "download"
    VERIFY = "verify"
    DELETE = "delete"
    METADATA = "metadata"


# Recording and interrupted recordings are still going on: at most one per room (the partial
# unique index holds when two nodes or workers start one at the same time).
ACTIVE_RECORDING = "state IN ('recording', 'interrupted')"


class Recording(Base):
    """The archive record of one recorded session of a room, with its files.

    Title, chair unit and participating sites are kept as they were then, so later renames do
    not rewrite the record. `keywords` is a JSON list of strings; `participating_sites` a JSON
    list of {"code", "name"}; `search_text` is derived from title, record code and keywords
    (server/recordings.py writes it) so that search is the same on both databases."""

    __tablename__ = "recordings"
    __table_args__ = (
        CheckConstraint("processing_progress BETWEEN 0 AND 100", name="processing_progress_range"),
        CheckConstraint("segments >= 1", name="segments_positive"),
        sa.Index(
            "uq_recordings_active_room_id",
            "room_id",
            unique=True,
            sqlite_where=sa.text(ACTIVE_RECORDING),
            postgresql_where=sa.text(ACTIVE_RECORDING),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    chair_site_code: Mapped[str | None] = mapped_column(String(32))
    chair_site_name: Mapped[str | None] = mapped_column(String(200))
    started_by_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL")
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    state: Mapped[RecordingState] = mapped_column(_enum(RecordingState, "recording_state"))
    failure_reason: Mapped[str | None] = mapped_column(sa.Text())
    processing_progress: Mapped[int] = mapped_column(default=0, server_default="0")
    record_code: Mapped[str | None] = mapped_column(String(64), unique=True)
    retention_until: Mapped[date | None] = mapped_column(sa.Date())
    access_level: Mapped[AccessLevel] = mapped_column(
        _enum(AccessLevel, "access_level"),
        default=AccessLevel.INTERNAL,
        server_default=AccessLevel.INTERNAL.value,
    )
    keywords: Mapped[str] = mapped_column(sa.Text(), default="[]", server_default="[]")
    participating_sites: Mapped[str] = mapped_column(sa.Text(), default="[]", server_default="[]")
    search_text: Mapped[str] = mapped_column(sa.Text(), default="", server_default="")
    segments: Mapped[int] = mapped_column(default=1, server_default="1")

    room: Mapped[RoomRecord] = relationship(lazy="raise")
    started_by: Mapped[Account | None] = relationship(lazy="raise")
    files: Mapped[list[RecordingFile]] = relationship(
        lazy="raise",
        cascade="all, delete-orphan",
        back_populates="recording",
        order_by="(RecordingFile.segment, RecordingFile.id)",
    )

    @property
    def duration(self) -> timedelta | None:
        """From start to stop; None while it is still going on."""
        return None if self.stopped_at is None else self.stopped_at - self.started_at

    def __repr__(self) -> str:
        return f"Recording(id={self.id!r}, room_id={self.room_id!r}, state={self.state!r})"


class RecordingFile(Base):
    """One file of a recording, `path` relative to the data directory's recordings/ folder.

    Track files carry who and what was recorded; the composite carries none of it. `sha256`,
    `size_bytes` and `closed_at` are set once, when the file is closed."""

    __tablename__ = "recording_files"
    __table_args__ = (CheckConstraint("segment >= 1", name="segment_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recording_id: Mapped[int] = mapped_column(
        ForeignKey("recordings.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[RecordingFileKind] = mapped_column(_enum(RecordingFileKind, "recording_file_kind"))
    segment: Mapped[int] = mapped_column(default=1)
    track_id: Mapped[str | None] = mapped_column(String(64))
    participant_name: Mapped[str | None] = mapped_column(String(200))
    site_code: Mapped[str | None] = mapped_column(String(32))
    site_name: Mapped[str | None] = mapped_column(String(200))
    media_kind: Mapped[MediaKind | None] = mapped_column(_enum(MediaKind, "media_kind"))
    codec: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500), unique=True)
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger())
    sha256: Mapped[str | None] = mapped_column(String(64))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_seconds: Mapped[float | None] = mapped_column(sa.Float())
    # Wall-clock time of the file's first frame: lines tracks up with each other for the
    # composite (the files' own timestamps start at 0).
    media_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    recording: Mapped[Recording] = relationship(lazy="raise", back_populates="files")


class RecordingAccess(Base):
    """One view, download, verification, metadata change or deletion of a recording.

    The entry outlives the recording (a deletion is logged too): `recording_id` becomes NULL
    then, and the title and record code kept here still say which recording it was."""

    __tablename__ = "recording_access"

    id: Mapped[int] = mapped_column(primary_key=True)
    recording_id: Mapped[int | None] = mapped_column(
        ForeignKey("recordings.id", ondelete="SET NULL"), index=True
    )
    recording_title: Mapped[str] = mapped_column(String(200))
    record_code: Mapped[str | None] = mapped_column(String(64))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    action: Mapped[RecordingAction] = mapped_column(_enum(RecordingAction, "recording_action"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    address: Mapped[str] = mapped_column(String(64), default="")

    account: Mapped[Account | None] = relationship(lazy="raise")
