"""A directory run (issue 13): the file counts of its record, and its files, one row per (upload, path).

``uploads`` gains ``files_total``, ``files_done``, ``files_failed`` and ``files_skipped`` (null for a one-file
upload, so every existing record stays one; the downgrade drops them with ``ALTER TABLE ... DROP COLUMN``).
``upload_files`` holds the newest state of each file the CLI sent through ``POST /api/v1/uploads/{id}/files``;
it goes with its upload (``ON DELETE CASCADE``). Its key is (upload, path) and a second index serves a page
of one status in path order. Paths compare byte-wise on both databases (PostgreSQL's "C" collation), so
pages are in the same order everywhere.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FILES_COLUMNS = ("files_total", "files_done", "files_failed", "files_skipped")


def upgrade() -> None:
    for name in FILES_COLUMNS:
        op.add_column("uploads", sa.Column(name, sa.Integer(), nullable=True))
    op.create_table(
        "upload_files",
        sa.Column("upload_id", sa.String(32), sa.ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("upload_id", "path", name="pk_upload_files"),
    )
    op.create_index("ix_upload_files_status_path", "upload_files", ["upload_id", "status", "path"])


def downgrade() -> None:
    op.drop_index("ix_upload_files_status_path", table_name="upload_files")
    op.drop_table("upload_files")
    # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch "move and copy" of uploads would drop the
    # old table, and with foreign keys on SQLite would delete every sample with it
    for name in reversed(FILES_COLUMNS):
        op.drop_column("uploads", name)
