"""Alembic environment: always runs on the connection handed in by :mod:`mpupload.server.db.migrate`."""

from __future__ import annotations

from alembic import context

from mpupload.server.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when someone runs the alembic CLI by hand
    raise RuntimeError("run migrations through mpupload.server.db.migrate.upgrade()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
