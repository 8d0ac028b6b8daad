"""What a brokered cluster run sends its workers (issue 15): a store that signs with the upload's worker token, and
never the user's login token, before or after the upload exists. The server's answers are a fake here (pure
logic); the routes themselves are tested in tests/integration/test_worker_tokens.py."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.api import cluster_settings
from mpupload.engine.dask_worker import RunSpec
from mpupload.engine.worker import WorkerConfig
from mpupload.options import UploadOptions
from mpupload.storage.brokered import BrokerConfig, BrokeredStore

LOGIN = "login-token-never-in-a-payload"
WORKER = "worker-token-of-the-upload"
CLUSTER = UploadOptions(cluster="tcp://127.0.0.1:8786")


class FakeServer:
    """The API server's answers to the coordinator's store, and what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, method: str, path: str, operation: str, *, body: Mapping[str, Any] | None = None,
                 upload_id: str | None = None) -> Any:
        self.calls.append((method, path, dict(body or {})))
        if path == "/api/v1/uploads":
            answer: dict[str, Any] = {"id": "run1" if body and body.get("dataset") else "up1"}
            if body and body.get("worker_token"):
                answer["worker_token"] = WORKER
            return answer
        if path.endswith("/worker-token"):
            return {"id": path.split("/")[-2], "token": WORKER}
        if path.endswith("/parts"):
            return {"parts": [], "checksum_algorithm": "none"}
        raise AssertionError(path)


def coordinator(monkeypatch: pytest.MonkeyPatch) -> tuple[BrokeredStore, FakeServer]:
    store = BrokeredStore(BrokerConfig("http://127.0.0.1:9", LOGIN, bucket="b", space="p/alice/"))
    server = FakeServer()
    monkeypatch.setattr(store, "_api", server)
    return store, server


def payload(store: BrokeredStore) -> bytes:
    """A task's arguments besides its job, pickled as Dask pickles them."""
    return pickle.dumps(RunSpec("run", WorkerConfig(store)))  # type: ignore[arg-type]


def test_the_workers_store_has_no_token_until_the_upload_is_created_then_its_worker_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, server = coordinator(monkeypatch)
    spec, workers = cluster_settings(CLUSTER, store)
    assert spec is not None and isinstance(workers, BrokeredStore) and workers is not store
    before = payload(workers)  # what the workers' check is sent, before the upload exists
    assert LOGIN.encode() not in before and pickle.loads(before).config.store.config.token == ""
    assert store.create_multipart_upload("b", "p/alice/f.bin", size=10, part_size=5) == "up1"
    [(_, _, body)] = server.calls
    assert body["worker_token"] is True  # asked for with the create: one request
    after = payload(workers)
    assert LOGIN.encode() not in after and pickle.loads(after).config.store.config.token == WORKER
    assert store.config.token == LOGIN  # the coordinator keeps its own


def test_a_run_s_worker_token_comes_with_the_run_and_covers_its_large_files(monkeypatch: pytest.MonkeyPatch) -> None:
    store, server = coordinator(monkeypatch)
    _, workers = cluster_settings(CLUSTER, store)
    assert isinstance(workers, BrokeredStore)
    store.open_run("p/alice/sets/", total_bytes=10, files_total=2, name="sets", algorithm=None)
    assert server.calls[0][2]["worker_token"] is True and workers.config.token == WORKER
    store.create_multipart_upload("b", "p/alice/sets/big", size=10, part_size=5)
    assert server.calls[1][2]["parent_id"] == "run1" and "worker_token" not in server.calls[1][2]
    assert LOGIN.encode() not in payload(workers)


def test_an_upload_resumed_on_a_cluster_gets_its_worker_token_when_its_parts_are_listed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, server = coordinator(monkeypatch)
    _, workers = cluster_settings(CLUSTER, store)
    assert isinstance(workers, BrokeredStore)
    store.list_parts_page("b", "p/alice/f.bin", "up7")
    assert [path for _, path, _ in server.calls] == ["/api/v1/uploads/up7/parts", "/api/v1/uploads/up7/worker-token"]
    assert workers.config.token == WORKER
    store.list_parts_page("b", "p/alice/f.bin", "up7")  # one token per upload, not one per listing
    assert len(server.calls) == 3


def test_a_resume_that_starts_a_new_upload_instead_gives_the_workers_the_new_upload_s_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts of an earlier upload were listed (its worker token asked for), then the file did not fit it: the
    new upload's create asks for its own, and the workers sign with that."""
    store, server = coordinator(monkeypatch)
    _, workers = cluster_settings(CLUSTER, store)
    assert isinstance(workers, BrokeredStore)
    store.list_parts_page("b", "p/alice/f.bin", "up7")
    assert workers.config.token == WORKER
    monkeypatch.setattr("tests.unit.test_brokered_cluster_store.WORKER", "for-the-new-upload")
    assert store.create_multipart_upload("b", "p/alice/f.bin", size=10, part_size=5) == "up1"
    assert server.calls[-1][2]["worker_token"] is True and workers.config.token == "for-the-new-upload"


def test_without_a_cluster_nothing_asks_for_a_worker_token(monkeypatch: pytest.MonkeyPatch) -> None:
    store, server = coordinator(monkeypatch)
    assert cluster_settings(UploadOptions(), store) == (None, None)
    store.create_multipart_upload("b", "p/alice/f.bin", size=10, part_size=5)
    store.list_parts_page("b", "p/alice/f.bin", "up1")
    assert all("worker_token" not in body and not path.endswith("worker-token") for _, path, body in server.calls)


def test_a_brokered_store_has_no_credentials_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = coordinator(monkeypatch)
    with pytest.raises(E.UsageError, match="no storage credentials to pass"):
        cluster_settings(UploadOptions(cluster="tcp://127.0.0.1:8786", cluster_pass_credentials=True), store)
