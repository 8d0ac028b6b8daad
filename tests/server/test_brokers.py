"""``--broker-url`` picks a real pub/sub backend; the server starts and publishes through it."""

from __future__ import annotations

import os

import httpx
import pytest

from .conftest import Backend, token_for
from .support import PG_ADMIN_DSN, start_server

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("MPUPLOAD_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("broker", ["redis", "postgresql"])
def test_server_with_broker_accepts_reports(backend: Backend, broker: str) -> None:
    url = REDIS_URL if broker == "redis" else PG_ADMIN_DSN
    server = start_server(backend.database_url, backend.tmp, "--broker-url", url)
    try:
        headers = token_for(server.base_url, "bob")
        record = httpx.post(f"{server.base_url}/api/v1/uploads", headers=headers, json={
            "filename": "f", "bucket": "b", "key": "k", "total_bytes": 10}).json()
        answer = httpx.post(f"{server.base_url}/api/v1/uploads/{record['id']}/progress", headers=headers,
                            json={"seq": 1, "status": "uploading", "bytes_done": 5})
        assert answer.status_code == 200 and answer.json()["upload"]["bytes_done"] == 5
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_unknown_broker_scheme_is_usage_error(backend: Backend) -> None:
    from .support import cli

    done = cli("serve", "--port", "1", "--database-url", backend.database_url, "--broker-url", "amqp://x")
    assert done.returncode == 2 and "unsupported broker URL" in done.stderr
