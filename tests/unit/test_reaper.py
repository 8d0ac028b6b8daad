"""The reaper's pure parts: how often it looks, what it writes, and ``--stale-after``'s reading."""

from __future__ import annotations

import pytest

from mpupload.errors import UsageError
from mpupload.server.reaper import MAX_REAP_EVERY_S, _reason, reap_every
from mpupload.server.settings import Settings


@pytest.mark.parametrize(("stale", "every"), [(86400, MAX_REAP_EVERY_S), (3600, 300), (600, 150), (3, 0.75),
                                              (1, 0.25), (0.1, 0.25)])
def test_reap_every_is_a_quarter_of_stale_after_within_bounds(stale: float, every: float) -> None:
    assert reap_every(stale) == every


def test_the_reason_names_the_limit() -> None:
    assert _reason(86400).startswith("idle for more than 24 h (--stale-after)")
    assert _reason(5400).startswith("idle for more than 1.5 h")
    assert _reason(3).startswith("idle for more than 3 s")


@pytest.mark.parametrize(("given", "env", "seconds"), [
    (None, {}, 86400.0), ("90m", {}, 5400.0), (None, {"MPUPLOAD_STALE_AFTER": "7d"}, 604800.0),
    ("2h", {"MPUPLOAD_STALE_AFTER": "7d"}, 7200.0), ("30", {}, 30.0)])
def test_stale_after_setting(given: str | None, env: dict[str, str], seconds: float) -> None:
    assert Settings.from_env(stale_after=given, env=env).stale_after_s == seconds


@pytest.mark.parametrize("bad", ["soon", "-1h", "0", "0.5s", "24 hours"])
def test_stale_after_refuses(bad: str) -> None:
    with pytest.raises(UsageError, match="--stale-after"):
        Settings.from_env(stale_after=bad, env={})
