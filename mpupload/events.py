"""Moved to :mod:`mpupload.wire` (the one wire schema); this module re-exports it until every import is switched."""

from __future__ import annotations

from .wire import Event, Snapshot, Status, utc_now_iso

__all__ = ["Event", "Status", "Snapshot", "utc_now_iso"]
