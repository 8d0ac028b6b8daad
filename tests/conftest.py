"""Shared fixtures: the S3 servers the suite starts itself (moto, Ceph RGW; HTTP and HTTPS with our own
CA), a fresh bucket per test, and the CLI environment.

Under ``CI=true`` a component that cannot start is a failure, never a skip.

``--shard ceph`` / ``--shard other`` select one of two disjoint halves of the suite, so that
``scripts/run-tests.sh`` can run them as two pytest processes at once (most of the suite waits on
subprocesses, proxies and servers, not on the CPU). Every test is in exactly one half: ``ceph`` holds every
test that needs a Ceph cluster (so only that process starts one), the API server tests, the unit tests and
the smoke benchmarks; ``other`` holds the rest (moto only). Each process starts its own session servers;
nothing is shared between them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import hermetic
from tests.support.s3server import S3Server

#: this pytest process's own HOME and XDG directories, without the user's MPUPLOAD_*/AWS_*/proxy settings
#: (tests/support/hermetic.py); every process a test starts inherits them
HERMETIC_HOME = hermetic.isolate()

if TYPE_CHECKING:
    from tests.support.odd_store import OddStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


SHARDS = ("ceph", "other")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", choices=SHARDS, default=None,
                     help="run only one of the two halves of the suite (see tests/conftest.py)")


def shard_of(item: pytest.Item) -> str:
    """The half a test belongs to: ``ceph`` for Ceph, the API server, the unit tests and the smoke benchmarks;
    ``other`` for the rest."""
    fixtures = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    store = str(callspec.params.get("s3", "")) if callspec is not None else ""
    path = item.path.as_posix()
    if ("ceph" in item.nodeid.lower() or fixtures & {"ceph_server", "ceph_https"} or store.startswith("ceph")
            or item.get_closest_marker("bench") is not None  # the smoke benchmarks: for balance
            or "/tests/server/" in path or "/tests/unit/" in path or "/tests/functional/" in path):
        return "ceph"
    return "other"


def pytest_unconfigure(config: pytest.Config) -> None:
    hermetic.remove(HERMETIC_HOME)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = config.getoption("--shard")
    if shard is None:
        return
    keep = [item for item in items if shard_of(item) == shard]
    dropped = [item for item in items if shard_of(item) != shard]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support.tls import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from tests.support.moto import start_moto

    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_https(moto_server: S3Server, tls_files: Any) -> Iterator[S3Server]:
    """moto behind a TLS-terminating proxy: the client speaks HTTPS verified against our own CA."""
    from tests.support.proxy import proxy_for

    proxy = proxy_for(moto_server, tls=tls_files)
    yield S3Server(name="moto+https", endpoint_url=f"https://127.0.0.1:{proxy.port}",
                   access_key=moto_server.access_key, secret_key=moto_server.secret_key,
                   ca_bundle=str(tls_files.ca_pem))
    proxy.stop()


@pytest.fixture
def odd_store(tmp_path: Path) -> Iterator[Callable[..., OddStore]]:
    """A factory of odd stores (tests/support/odd_store.py): ``odd_store("--keep-bodies", ...)`` starts one
    with these flags and returns its ``OddStore``; every store started is stopped at teardown."""
    from tests.support.odd_store import start_odd_store

    started: list[OddStore] = []

    def start(*flags: str) -> OddStore:
        store = start_odd_store(tmp_path / f"odd-store-{len(started)}", *flags)
        started.append(store)
        return store

    yield start
    for store in started:
        store.stop()


def require_ceph() -> None:
    """Missing Ceph programs: a failure under CI=true, a skip on a developer's machine."""
    from tests.support.ceph import missing_binaries

    missing = missing_binaries()
    if missing:
        message = f"Ceph is not installed ({', '.join(missing)}): make test installs it"
        (pytest.fail if IN_CI else pytest.skip)(message)


def _start_ceph(tmp_path_factory: pytest.TempPathFactory, tls: Any = None) -> S3Server:
    from tests.support.ceph import start_ceph

    require_ceph()
    server = start_ceph(tmp_path_factory.mktemp("ceph"),
                        tls=None if tls is None else (str(tls.cert_pem), str(tls.key_pem)))
    if tls is not None:
        server.ca_bundle = str(tls.ca_pem)
    return server


@pytest.fixture(scope="session")
def ceph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = _start_ceph(tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ceph_https(tmp_path_factory: pytest.TempPathFactory, tls_files: Any) -> Iterator[S3Server]:
    server = _start_ceph(tmp_path_factory, tls_files)
    yield server
    server.stop()


SERVERS = ["moto", "ceph"]
ALL_SERVERS = ["moto", "ceph", "moto+https", "ceph+https"]
_FIXTURE = {"moto": "moto_server", "ceph": "ceph_server", "moto+https": "moto_https", "ceph+https": "ceph_https"}


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> S3Server:
    """The server named by ``@pytest.mark.parametrize("s3", [...], indirect=True)``."""
    return request.getfixturevalue(_FIXTURE[request.param])


def empty_bucket(client: Any, bucket: str) -> None:
    with contextlib.suppress(Exception):
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    with contextlib.suppress(Exception):
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=name)
    yield name
    empty_bucket(client, name)
