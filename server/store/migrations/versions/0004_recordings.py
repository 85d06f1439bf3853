"""Recordings: the catalogue, their files and the access log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("chair_site_code", sa.String(length=32), nullable=True),
        sa.Column("chair_site_name", sa.String(length=200), nullable=True),
        sa.Column("started_by_account_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "recording",
                "interrupted",
                "processing",
                "ready",
                "failed",
                name="recording_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("processing_progress", sa.Integer(), server_default="0", nullable=False),
        sa.Column("record_code", sa.String(length=64), nullable=True),
        sa.Column("retention_until", sa.Date(), nullable=True),
        sa.Column(
            "access_level",
            sa.Enum(
                "internal",
                "restricted",
                "confidential",
                name="access_level",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="internal",
            nullable=False,
        ),
        sa.Column("keywords", sa.Text(), server_default="[]", nullable=False),
        sa.Column("participating_sites", sa.Text(), server_default="[]", nullable=False),
        sa.Column("search_text", sa.Text(), server_default="", nullable=False),
        sa.Column("segments", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint(
            "processing_progress BETWEEN 0 AND 100",
            name=op.f("ck_recordings_processing_progress_range"),
        ),
        sa.CheckConstraint("segments >= 1", name=op.f("ck_recordings_segments_positive")),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name=op.f("fk_recordings_room_id_rooms"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["started_by_account_id"],
            ["accounts.id"],
            name=op.f("fk_recordings_started_by_account_id_accounts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recordings")),
        sa.UniqueConstraint("record_code", name=op.f("uq_recordings_record_code")),
    )
    # At most one recording going on per room: a partial unique index (both databases).
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recordings_room_id"), ["room_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_recordings_started_at"), ["started_at"], unique=False)
        batch_op.create_index(
            "uq_recordings_active_room_id",
            ["room_id"],
            unique=True,
            sqlite_where=sa.text("state IN ('recording', 'interrupted')"),
            postgresql_where=sa.text("state IN ('recording', 'interrupted')"),
        )

    op.create_table(
        "recording_access",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recording_id", sa.Integer(), nullable=True),
        sa.Column("recording_title", sa.String(length=200), nullable=False),
        sa.Column("record_code", sa.String(length=64), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column(
            "action",
            sa.Enum(
                "view",
                "download",
                "verify",
                "delete",
                "metadata",
                name="recording_action",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_recording_access_account_id_accounts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_recording_access_recording_id_recordings"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recording_access")),
    )
    with op.batch_alter_table("recording_access", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recording_access_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_recording_access_recording_id"), ["recording_id"], unique=False
        )

    op.create_table(
        "recording_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recording_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "track",
                "composite",
                name="recording_file_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.String(length=64), nullable=True),
        sa.Column("participant_name", sa.String(length=200), nullable=True),
        sa.Column("site_code", sa.String(length=32), nullable=True),
        sa.Column("site_name", sa.String(length=200), nullable=True),
        sa.Column(
            "media_kind",
            sa.Enum(
                "audio",
                "video",
                name="media_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("codec", sa.String(length=64), nullable=True),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("media_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("segment >= 1", name=op.f("ck_recording_files_segment_positive")),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_recording_files_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recording_files")),
        sa.UniqueConstraint("path", name=op.f("uq_recording_files_path")),
    )
    with op.batch_alter_table("recording_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_recording_files_recording_id"), ["recording_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("recording_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recording_files_recording_id"))

    op.drop_table("recording_files")
    with op.batch_alter_table("recording_access", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recording_access_recording_id"))
        batch_op.drop_index(batch_op.f("ix_recording_access_at"))

    op.drop_table("recording_access")
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.drop_index("uq_recordings_active_room_id")
        batch_op.drop_index(batch_op.f("ix_recordings_started_at"))
        batch_op.drop_index(batch_op.f("ix_recordings_room_id"))

    op.drop_table("recordings")
