"""Pure pieces: settings and URL mapping, the login rate limiter, the transition table."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from mpupload.errors import UsageError
from mpupload.server.auth import LoginRateLimiter, hash_token
from mpupload.server.db.models import UploadStatus as S
from mpupload.server.settings import Settings, default_database_url, normalize_database_url
from mpupload.server.uploads import ALLOWED, new_upload_id


@pytest.mark.parametrize(("plain", "driver"), [
    ("sqlite:////var/lib/x.db", "sqlite+aiosqlite:////var/lib/x.db"),
    ("sqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
    ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
    ("postgres://h/db", "postgresql+asyncpg://h/db"),
    ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
])
def test_database_urls_map_to_drivers(plain: str, driver: str) -> None:
    assert normalize_database_url(plain) == driver


@pytest.mark.parametrize("bad", ["mysql://h/db", "just-a-path.db", ""])
def test_bad_database_urls(bad: str) -> None:
    with pytest.raises(UsageError):
        normalize_database_url(bad)


def test_default_database_in_the_data_dir() -> None:
    assert default_database_url({"XDG_DATA_HOME": "/d"}) == "sqlite+aiosqlite:////d/mpupload/server.db"
    assert default_database_url({}).endswith("/.local/share/mpupload/server.db")


def test_settings_from_env() -> None:
    s = Settings.from_env(env={"MPUPLOAD_DATABASE_URL": "postgresql://h/db", "MPUPLOAD_BROKER_URL": "redis://r",
                               "MPUPLOAD_TOKEN_TTL": "60", "MPUPLOAD_HISTORY_LIMIT": "7"})
    assert (s.database_url, s.broker_url, s.token_ttl_s, s.history_limit) == (
        "postgresql+asyncpg://h/db", "redis://r", 60.0, 7)
    assert Settings.from_env(database_url="sqlite:///a.db", env={"MPUPLOAD_DATABASE_URL": "postgresql://h/db"}
                             ).is_sqlite
    with pytest.raises(UsageError):
        Settings.from_env(env={"MPUPLOAD_TOKEN_TTL": "soon"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_per_address_and_user_and_per_address() -> None:
    clock = FakeClock()
    limiter = LoginRateLimiter(max_per_user=2, max_per_address=3, window_s=60, clock=clock)
    limiter.failed("a", "1.1.1.1")
    assert limiter.retry_after("a", "1.1.1.1") is None
    limiter.failed("a", "1.1.1.1")
    assert limiter.retry_after("a", "1.1.1.1") == pytest.approx(60)  # this user from this address
    assert limiter.retry_after("a", "2.2.2.2") is None  # the owner, from elsewhere, is not locked out
    assert limiter.retry_after("b", "1.1.1.1") is None
    limiter.failed("b", "1.1.1.1")
    assert limiter.retry_after("c", "1.1.1.1") == pytest.approx(60)  # per address, any user
    clock.now += 30
    assert limiter.retry_after("c", "1.1.1.1") == pytest.approx(30)
    clock.now += 30
    assert limiter.retry_after("a", "1.1.1.1") is None  # the window slid past
    limiter.failed("d", "9.9.9.9")
    assert len(limiter) == 2  # expired keys went at this failure (only its pair and address are left)
    limiter.succeeded("d", "9.9.9.9")
    limiter.failed("d", "9.9.9.9")
    assert limiter.retry_after("d", "9.9.9.9") is None  # the good login cleared the pair


def test_tokens_are_stored_as_sha256() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_transition_table() -> None:
    assert ALLOWED[S.COMPLETED] == {S.COMPLETED}
    assert S.UPLOADING in ALLOWED[S.STOPPED] and S.UPLOADING in ALLOWED[S.FAILED]
    assert S.UPLOADING not in ALLOWED[S.FINALIZING]
    assert all(status in ALLOWED[status] for status in S)  # a repeated status is always fine


def test_the_documented_graphql_schema_is_the_served_one() -> None:
    from pathlib import Path

    from mpupload.server.graphql import schema

    documented = (Path(__file__).resolve().parents[2] / "docs" / "schema.graphql").read_text()
    assert documented == schema.as_str() + "\n", "regenerate docs/schema.graphql (see docs/server.md)"


def test_upload_ids_never_begin_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter(["-leading-dash", "_underscore", "Ab3-_x"])
    monkeypatch.setattr("mpupload.server.uploads.secrets.token_urlsafe", lambda n: next(draws))
    assert new_upload_id() == "Ab3-_x"
    monkeypatch.undo()
    ids = {new_upload_id() for _ in range(2000)}
    assert len(ids) == 2000 and not any(i[0] in "-_" for i in ids) and all(len(i) == 16 for i in ids)


def test_the_dummy_hash_is_made_once_on_first_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hash at import; the first unknown-user login (or the server's start-up) makes it, exactly once even
    when several threads ask at the same moment, and an unknown user never signs in."""
    import asyncio
    import threading

    from mpupload.server import auth

    made: list[str] = []

    class Counting(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            made.append(str(password))
            return super().hash(password, salt=salt)

    monkeypatch.setattr(auth, "_HASHER", Counting())
    monkeypatch.setattr(auth, "_dummy", None)
    start = threading.Barrier(6)
    results: list[str] = []

    def ask() -> None:
        start.wait()
        results.append(auth._dummy_hash())

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(set(results)) == 1 and results[0].startswith("$argon2")
    assert asyncio.run(auth.verify_password(None, "mpupload-no-such-user")) is False
    assert len(made) == 1
