"""Brokered directory runs (issue 15): one record for the run, the objects it signed, its large files' uploads.

``uploads`` gains ``parent_id``: a large file of a brokered directory run is a multipart upload of its own (its
record names the run's record), counted in the run's bytes and not again in the user's quota; stopping the run
aborts it. ``brokered_objects`` holds every object a brokered run had signed, with its size: what the run may
still sign is checked against the bytes it declared (and the quota allowed), and a key signed again (a retry) is
not counted twice.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("uploads", sa.Column("parent_id", sa.String(32), nullable=True))
    op.create_index("ix_uploads_parent_id", "uploads", ["parent_id"])
    op.create_table(
        "brokered_objects",
        sa.Column("upload_id", sa.String(32), sa.ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("upload_id", "key", name="pk_brokered_objects"),
    )


def downgrade() -> None:
    op.drop_table("brokered_objects")
    op.drop_index("ix_uploads_parent_id", table_name="uploads")
    op.drop_column("uploads", "parent_id")
