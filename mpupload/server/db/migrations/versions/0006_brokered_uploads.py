"""Brokered uploads (issue 15): the server's own storage holds the object, the server signs the parts.

``uploads`` gains ``brokered`` (false for every existing record), the store's multipart ``store_upload_id`` (null
for a single PutObject), the object's full ``storage_key`` (``PREFIX/<user>/KEY``), the ``checksum_algorithm``
signed into every part, how the finished object was ``verified`` and ``last_activity_at`` (the last create, sign,
complete or abort: what a reaper will read). ``users`` gains ``quota_bytes`` (null: no quota): the most bytes
of brokered uploads in flight and stored a user may have. The downgrade drops them with ``ALTER TABLE ... DROP COLUMN``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = ("brokered", "store_upload_id", "storage_key", "checksum_algorithm", "verified", "last_activity_at")


def upgrade() -> None:
    op.add_column("uploads", sa.Column("brokered", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("uploads", sa.Column("store_upload_id", sa.Text(), nullable=True))
    op.add_column("uploads", sa.Column("storage_key", sa.Text(), nullable=True))
    op.add_column("uploads", sa.Column("checksum_algorithm", sa.String(16), nullable=True))
    op.add_column("uploads", sa.Column("verified", sa.String(32), nullable=True))
    op.add_column("uploads", sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("quota_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # a plain ALTER TABLE ... DROP COLUMN, as in 0005 (no batch copy of uploads)
    op.drop_column("users", "quota_bytes")
    for name in reversed(COLUMNS):
        op.drop_column("uploads", name)
