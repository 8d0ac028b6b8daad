"""A secret shared by the replicas through the database: the key that signs every bus message.

The key is created here, once (the upgrade runs under the migration lock, so concurrent replicas cannot
each create one), and every replica and ``mpupload users`` command reads it from the database. A message
on the broker without a valid signature is dropped, so write access to Redis or to PostgreSQL's NOTIFY is
not enough to forge a dashboard row or a revocation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "bus_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.bulk_insert(table, [{"key": secrets.token_hex(32), "created_at": dt.datetime.now(dt.UTC)}])


def downgrade() -> None:
    op.drop_table("bus_keys")
