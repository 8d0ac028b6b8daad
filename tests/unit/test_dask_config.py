"""The coordinator's Dask settings: applied before distributed is imported, a setting of the user's kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mpupload.engine.dask_executor import COORDINATOR_DASK_CONFIG

SHOW = ("from mpupload.engine.dask_executor import _distributed, COORDINATOR_DASK_CONFIG as C; d = _distributed(); "
        "import dask, json; print(json.dumps({k: dask.config.get(k) for k in C}))")


def _settings(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, timeout=120,
                         env={**clean, "DASK_CONFIG": os.devnull, **env}, check=True)
    return json.loads(out.stdout)


def test_the_coordinator_sets_its_dask_settings() -> None:
    assert _settings() == COORDINATOR_DASK_CONFIG
    assert COORDINATOR_DASK_CONFIG["distributed.client.heartbeat"] == "30s"


def test_a_setting_of_the_users_is_kept() -> None:
    got = _settings(DASK_DISTRIBUTED__CLIENT__HEARTBEAT="7s", DASK_DISTRIBUTED__COMM__OFFLOAD="1MiB")
    assert got["distributed.client.heartbeat"] == "7s"
    assert got["distributed.comm.offload"] == "1MiB"
    assert got["distributed.client.scheduler-info-interval"] == "30s"
