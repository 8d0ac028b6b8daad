"""User and token ids are never reused: SQLite tables get ``AUTOINCREMENT`` (PostgreSQL's ``SERIAL``
sequences already never hand out an id twice).

Without it SQLite gives a new row ``max(id) + 1``, so the user created after the newest one was removed got
that user's id, and anything still bound to the old id (an open socket, a bus channel) saw the new user.

SQLite cannot add ``AUTOINCREMENT`` to a table, so the four tables are rebuilt: their rows are copied aside,
the tables dropped children first (with foreign keys on, dropping a parent first would cascade-delete its
children's rows), re-created parents first and filled again with the same ids. ``sqlite_sequence`` then starts
at the highest id present.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("users", "tokens", "uploads", "samples")  # parents first


def _create(autoincrement: bool) -> None:
    kwargs = {"sqlite_autoincrement": True} if autoincrement else {}
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(150), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        **kwargs,
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        **kwargs,
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("parts_total", sa.Integer(), nullable=False),
        sa.Column("parts_done", sa.Integer(), nullable=False),
        sa.Column("speed_bps", sa.Float(), nullable=False),
        sa.Column("avg_speed_bps", sa.Float(), nullable=False),
        sa.Column("eta_seconds", sa.Float(), nullable=True),
        sa.Column("elapsed_seconds", sa.Float(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.Text(), nullable=True),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("resume_command", sa.Text(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_uploads_owner_id", "uploads", ["owner_id"])
    op.create_table(  # sample ids are nobody's reference: no AUTOINCREMENT (it costs on every report)
        "samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("upload_id", sa.String(32), sa.ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("speed_bps", sa.Float(), nullable=False),
    )
    op.create_index("ix_samples_upload_id", "samples", ["upload_id"])


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return  # PostgreSQL: SERIAL ids come from sequences, which never go back
    columns = {}
    for table in _TABLES:
        columns[table] = [row[1] for row in bind.exec_driver_sql(f'PRAGMA table_info("{table}")')]
        bind.exec_driver_sql(f'CREATE TABLE "_rebuild_{table}" AS SELECT * FROM "{table}"')
    for table in reversed(_TABLES):  # children first: nothing cascades
        bind.exec_driver_sql(f'DROP TABLE "{table}"')
    _create(autoincrement)
    for table in _TABLES:  # parents first: every foreign key holds
        names = ", ".join(f'"{name}"' for name in columns[table])
        bind.exec_driver_sql(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM "_rebuild_{table}"')
        bind.exec_driver_sql(f'DROP TABLE "_rebuild_{table}"')


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
