"""What a cluster run sends to its workers with every task: the store's settings, resolved on the coordinator
(endpoint, region), and never a credential unless --cluster-pass-credentials says so."""

from __future__ import annotations

import pickle

import pytest

from mpupload import errors as E
from mpupload.api import cluster_settings
from mpupload.engine.dask_worker import RunSpec
from mpupload.engine.worker import WorkerConfig
from mpupload.options import UploadOptions
from mpupload.storage import StoreConfig

SECRET = "s3cr3t-never-in-a-payload"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    from mpupload.storage import config

    monkeypatch.setattr(config, "_SESSIONS", {})


def payload(store: object) -> bytes:
    """A task's arguments besides its job, pickled as Dask pickles them."""
    return pickle.dumps(RunSpec("run", WorkerConfig(store)))  # type: ignore[arg-type]


def test_no_secret_travels_by_default(aws_env: None) -> None:
    spec, store = cluster_settings(UploadOptions(cluster="tcp://127.0.0.1:8786"), StoreConfig())
    assert spec is not None and spec.address == "tcp://127.0.0.1:8786"
    data = payload(store)
    assert SECRET.encode() not in data and b"AKIDEXAMPLE" not in data
    config = store.config  # type: ignore[union-attr]
    assert (config.endpoint_url, config.region, config.credentials) == ("http://127.0.0.1:9", "eu-west-3", None)


def test_pass_credentials_puts_them_in_the_payload_but_never_in_repr(aws_env: None) -> None:
    _, store = cluster_settings(UploadOptions(cluster="tcp://h:8786", cluster_pass_credentials=True), StoreConfig())
    assert SECRET.encode() in payload(store)
    assert SECRET not in repr(store)
    assert store.config.credentials == ("AKIDEXAMPLE", SECRET, None)  # type: ignore[union-attr]


def test_pass_credentials_without_a_cluster_is_a_usage_error() -> None:
    with pytest.raises(E.UsageError, match="--cluster-pass-credentials goes with --cluster"):
        cluster_settings(UploadOptions(cluster_pass_credentials=True), StoreConfig())


def test_no_cluster_no_settings() -> None:
    assert cluster_settings(UploadOptions(), StoreConfig()) == (None, None)


def _options(argv: list[str]) -> UploadOptions:
    from mpupload.cli.main import build_parser
    from mpupload.cli.upload import build_options

    args = build_parser().parse_args(["upload", "f.bin", "s3://b/k", *argv])
    return build_options(args, "b", "k")


def test_the_cli_takes_the_cluster_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPUPLOAD_CLUSTER", raising=False)
    assert _options([]).cluster is None
    assert _options(["--cluster", "tcp://a:8786"]).cluster == "tcp://a:8786"
    monkeypatch.setenv("MPUPLOAD_CLUSTER", "tcp://env:8786")
    assert _options([]).cluster == "tcp://env:8786"
    options = _options(["--cluster", "tcp://a:8786", "--cluster-pass-credentials"])
    assert options.cluster == "tcp://a:8786" and options.cluster_pass_credentials


def test_without_the_extra_a_cluster_run_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mpupload.engine.dask_executor import ClusterSpec, DaskExecutor
    from mpupload.storage.boto3_store import Boto3Store

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(E.UsageError, match=r"pip install 'mpupload\[cluster\]'"):
        DaskExecutor(ClusterSpec("tcp://127.0.0.1:1"), WorkerConfig(Boto3Store(StoreConfig())))


def test_a_scheduler_that_does_not_answer_is_cluster_unavailable() -> None:
    import socket

    from mpupload.engine.dask_executor import ClusterSpec, DaskExecutor
    from mpupload.storage.boto3_store import Boto3Store

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(E.ClusterUnavailable, match=f"cannot connect to the Dask scheduler at tcp://127.0.0.1:{port}"):
        DaskExecutor(ClusterSpec(f"tcp://127.0.0.1:{port}", connect_timeout_s=0.5),
                     WorkerConfig(Boto3Store(StoreConfig())))
