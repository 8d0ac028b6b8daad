"""Worker tokens (issue 15): a token scoped to one brokered upload or directory run, for a cluster's workers.

``tokens`` gains ``upload_id``: a token with one signs URLs for that record (a run: and the large files' uploads
in it) and does nothing else; it is dead once the record is no longer active. ``parent_id`` is the login token
it was made with: logging out revokes it too, and it never outlives it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("upload_id", sa.String(32), nullable=True))
    op.add_column("tokens", sa.Column("parent_id", sa.Integer(), nullable=True))
    op.create_index("ix_tokens_upload_id", "tokens", ["upload_id"])
    op.create_index("ix_tokens_parent_id", "tokens", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_tokens_parent_id", table_name="tokens")
    op.drop_index("ix_tokens_upload_id", table_name="tokens")
    op.drop_column("tokens", "parent_id")
    op.drop_column("tokens", "upload_id")
