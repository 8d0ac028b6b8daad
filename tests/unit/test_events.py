"""The progress snapshot schema (mpupload.wire) against the contract in MISSION.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

import pytest

from mpupload.units import GiB
from mpupload.wire import Event, Snapshot, Status, utc_now_iso

CONTRACT_KEYS = {
    "event", "upload_id", "bucket", "key", "total_bytes", "bytes_done", "percent", "speed_bps",
    "avg_speed_bps", "eta_seconds", "elapsed_seconds", "parts_done", "parts_total", "status", "timestamp",
}
ISO_UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def snap(**overrides: Any) -> Snapshot:
    fields: dict[str, Any] = dict(
        event=Event.PROGRESS, status=Status.UPLOADING, upload_id="up-1", bucket="b", key="data/x.bin",
        total_bytes=200 * GiB, bytes_done=50 * GiB, speed_bps=100.0, avg_speed_bps=90.0, eta_seconds=12.0,
        elapsed_seconds=3.5, parts_done=10, parts_total=40,
    )
    fields.update(overrides)
    return Snapshot(**fields)


def roundtrip(s: Snapshot) -> dict[str, Any]:
    return json.loads(json.dumps(s.to_dict(), allow_nan=False))  # type: ignore[no-any-return]


def test_to_dict_has_exactly_the_contract_keys() -> None:
    s = snap()
    data = s.to_dict()
    assert set(data) == CONTRACT_KEYS
    assert roundtrip(s) == data


def test_to_dict_values() -> None:
    data = roundtrip(snap())
    assert data["event"] == "progress"
    assert data["status"] == "uploading"
    assert data["upload_id"] == "up-1"
    assert (data["bucket"], data["key"]) == ("b", "data/x.bin")
    assert data["total_bytes"] == 200 * GiB  # 64-bit byte counts survive JSON
    assert data["bytes_done"] == 50 * GiB
    assert data["percent"] == 25.0
    assert (data["speed_bps"], data["avg_speed_bps"], data["eta_seconds"]) == (100.0, 90.0, 12.0)
    assert data["elapsed_seconds"] == 3.5
    assert (data["parts_done"], data["parts_total"]) == (10, 40)


@pytest.mark.parametrize(
    ("event", "extra"),
    [
        (Event.STARTED, {"part_size": 64 * 2**20, "workers": 4, "resumed_bytes": 0, "resumed_parts": 0}),
        (
            Event.COMPLETED,
            {"checksum": "abc=", "etag": '"e-2"', "location": "https://x", "verified": "crc32c"},
        ),
        (Event.STOPPED, {"aborted": False, "resume_command": "mpupload upload --resume f s3://b/k"}),
        (Event.FAILED, {"error": "the store is unreachable: retry later"}),
    ],
)
def test_extras_are_added_to_the_contract_keys(event: Event, extra: dict[str, Any]) -> None:
    data = roundtrip(snap(event=event, extra=extra))
    assert set(data) == CONTRACT_KEYS | set(extra)
    assert {k: data[k] for k in extra} == extra
    assert data["event"] == event.value


@pytest.mark.parametrize(
    ("total", "done", "status", "expected"),
    [
        (100, 0, Status.UPLOADING, 0.0),
        (100, 1, Status.UPLOADING, 1.0),
        (3, 1, Status.UPLOADING, 33.333),
        (100, 100, Status.COMPLETED, 100.0),
        (100, 150, Status.UPLOADING, 100.0),  # clamps
        (100, 10**12, Status.COMPLETED, 100.0),
        (0, 0, Status.COMPLETED, 100.0),  # a finished zero-byte file is 100%
        (0, 0, Status.UPLOADING, 0.0),
        (0, 0, Status.PENDING, 0.0),
        (0, 0, Status.FAILED, 0.0),
    ],
)
def test_percent(total: int, done: int, status: Status, expected: float) -> None:
    s = snap(total_bytes=total, bytes_done=done, status=status)
    assert s.to_dict()["percent"] == expected
    assert 0.0 <= s.percent <= 100.0


def test_unknown_eta_is_json_null() -> None:
    text = json.dumps(snap(eta_seconds=None).to_dict(), allow_nan=False)
    assert '"eta_seconds": null' in text
    assert json.loads(text)["eta_seconds"] is None


def test_unknown_speed_is_a_number_not_null() -> None:
    data = roundtrip(snap(speed_bps=None, eta_seconds=None))
    assert data["speed_bps"] == 0.0
    assert data["eta_seconds"] is None


def test_upload_id_none_for_single_put() -> None:
    data = roundtrip(snap(upload_id=None))
    assert "upload_id" in data and data["upload_id"] is None


def test_rounding() -> None:
    data = snap(speed_bps=1.26, avg_speed_bps=2.04, eta_seconds=3.06, elapsed_seconds=1.23456).to_dict()
    assert (data["speed_bps"], data["avg_speed_bps"], data["eta_seconds"]) == (1.3, 2.0, 3.1)
    assert data["elapsed_seconds"] == 1.235


def test_timestamp_is_iso8601_utc_z() -> None:
    before = dt.datetime.now(dt.UTC)
    stamp = snap().to_dict()["timestamp"]
    after = dt.datetime.now(dt.UTC)
    assert ISO_UTC_Z.match(stamp), stamp
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(milliseconds=1) <= parsed <= after + dt.timedelta(milliseconds=1)


def test_utc_now_iso() -> None:
    stamp = utc_now_iso()
    assert ISO_UTC_Z.match(stamp), stamp
    assert "+00:00" not in stamp


def test_timestamp_can_be_given() -> None:
    assert snap(timestamp="2024-01-02T03:04:05.006Z").to_dict()["timestamp"] == "2024-01-02T03:04:05.006Z"


def test_enum_values_are_the_contract_strings() -> None:
    assert [e.value for e in Event] == ["started", "progress", "completed", "stopped", "failed", "file_completed",
                                       "file_failed"]
    assert [s.value for s in Status] == [
        "pending", "uploading", "finalizing", "completed", "stopped", "failed",
    ]
    assert Event("stopped") is Event.STOPPED
    assert Status("finalizing") is Status.FINALIZING
    # str enums serialise as their value even when passed to json directly
    assert json.dumps([Event.FAILED, Status.FAILED]) == '["failed", "failed"]'


def test_snapshot_is_frozen_and_extras_are_not_shared() -> None:
    a, b = snap(), snap()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bytes_done = 0  # type: ignore[misc]
    a.extra["x"] = 1
    assert "x" not in b.extra
