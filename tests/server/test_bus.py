"""The pub/sub bus on every backend, against private brokers that the tests kill and restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from mpupload.server.bus.local import BufferedSubscription, LocalBus
from mpupload.server.bus.pg import PostgresBus
from mpupload.server.bus.redis import RedisBus
from tests.server.brokers import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.integration

T = TypeVar("T")
AnyBus = LocalBus | PostgresBus | RedisBus
BUFFER = 32
WAIT = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rd() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.stop()


BusFactory = Callable[[], AnyBus]


@pytest.fixture(params=["local", "postgres", "redis"])
def make_bus(request: pytest.FixtureRequest) -> BusFactory:
    """A factory of buses that share one broker (LocalBus: one shared instance, as a single process)."""
    kind = request.param
    if kind == "local":
        shared = LocalBus(buffer_size=BUFFER)
        return lambda: shared
    if kind == "postgres":
        server: PrivatePostgres = request.getfixturevalue("pg")
        server.ensure_running()
        return lambda: PostgresBus(server.dsn, buffer_size=BUFFER, backoff_max=1.0, health_interval=2.0)
    rserver: PrivateRedis = request.getfixturevalue("rd")
    rserver.ensure_running()
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return lambda: RedisBus(rserver.url, prefix=prefix, buffer_size=BUFFER, backoff_max=1.0, health_interval=2.0)


async def next_payload(sub: BufferedSubscription, timeout: float = WAIT) -> dict[str, Any]:
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def wait_for_condition(cond: Callable[[], bool], deadline: float) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(0.01)


async def publish_until(
    publish: Callable[[int], Awaitable[None]], sub: BufferedSubscription, deadline: float = 60.0
) -> tuple[dict[str, Any], float]:
    """Publish attempt after attempt until the subscriber gets one; bounded by ``deadline``."""
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        await publish(attempt)
        try:
            return await next_payload(sub, 0.25), time.monotonic() - start
        except TimeoutError:
            if time.monotonic() - start > deadline:
                raise AssertionError(f"nothing received within {deadline}s ({attempt} attempts)") from None


def test_publish_reaches_subscriber_and_every_subscriber(make_bus: BusFactory) -> None:
    async def body() -> None:
        bus = make_bus()
        await bus.start()
        try:
            async with bus.subscribe("user:42") as a, bus.subscribe("user:42") as b:
                await bus.publish("user:42", {"id": "u1", "bytes": 5})
                assert await next_payload(a) == {"id": "u1", "bytes": 5}
                assert await next_payload(b) == {"id": "u1", "bytes": 5}
        finally:
            await bus.close()

    run(body())


def test_channel_isolation(make_bus: BusFactory) -> None:
    async def body() -> None:
        bus = make_bus()
        await bus.start()
        try:
            async with bus.subscribe("user:1") as one, bus.subscribe("user:2") as two:
                await bus.publish("user:2", {"id": "theirs"})
                await bus.publish("user:1", {"id": "mine"})
                assert await next_payload(two) == {"id": "theirs"}
                # Same publisher connection, same listener: user:2's message would have come first.
                assert await next_payload(one) == {"id": "mine"}
                assert one.drain() == []
        finally:
            await bus.close()

    run(body())


def test_slow_subscriber_is_bounded_and_keeps_latest_per_id(make_bus: BusFactory) -> None:
    async def body() -> None:
        bus = make_bus()
        await bus.start()
        try:
            async with bus.subscribe("user:7") as slow, bus.subscribe("user:7") as probe:
                ids = ["a", "b", "c"]
                last: dict[str, int] = {}
                for n in range(10_000):
                    key = ids[n % 3]
                    last[key] = n
                    await bus.publish("user:7", {"id": key, "n": n})
                    if n % 500 == 0:
                        probe.drain()  # keep the probe itself from overflowing
                await bus.publish("user:7", {"id": "done"})
                # Both subscriptions are fed by the same callback: once the probe has "done", so has `slow`.
                while (await next_payload(probe))["id"] != "done":
                    pass
                got = slow.drain()
                assert len(got) <= BUFFER
                assert got[-1] == {"id": "done"}
                final = {p["id"]: p["n"] for p in got if p["id"] != "done"}
                assert final == last
                assert slow.dropped > 0
        finally:
            await bus.close()

    run(body())


def test_latest_wins_buffer_unit() -> None:
    async def attach(sub: BufferedSubscription) -> None:
        return None

    sub = BufferedSubscription("c", attach, attach, maxsize=4)
    for n in range(8):
        sub.push({"id": n % 2, "n": n})
    assert len(sub) == 4
    sub.push({"id": "new"})  # collapses duplicates first: 0 -> n=6, 1 -> n=7
    assert sub.drain() == [{"id": 0, "n": 6}, {"id": 1, "n": 7}, {"id": "new"}]
    for n in range(10):
        sub.push({"id": n})
    assert [p["id"] for p in sub.drain()] == [6, 7, 8, 9]


def count_failed_reconnects(bus: PostgresBus | RedisBus) -> Callable[[], int]:
    """How many of ``bus``'s connection attempts have failed so far: wraps the call its supervisor retries with
    backoff (``_connect_listener`` for PostgreSQL, ``_subscribe`` for Redis)."""
    name = "_connect_listener" if isinstance(bus, PostgresBus) else "_subscribe"
    original = getattr(bus, name)
    failed = 0

    async def attempt(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        try:
            return await original(*args, **kwargs)
        except Exception:
            failed += 1
            raise

    setattr(bus, name, attempt)
    return lambda: failed


def killable_broker(kind: str, request: pytest.FixtureRequest, *, backoff_max: float, health_interval: float
                    ) -> tuple[PrivatePostgres | PrivateRedis, Callable[[], PostgresBus | RedisBus]]:
    """The module's private broker of ``kind`` (the tests kill it) and a factory of buses on it."""
    if kind == "postgres":
        pg: PrivatePostgres = request.getfixturevalue("pg")
        pg.ensure_running()
        return pg, lambda: PostgresBus(pg.dsn, buffer_size=BUFFER, backoff_max=backoff_max,
                                       health_interval=health_interval)
    rd: PrivateRedis = request.getfixturevalue("rd")
    rd.ensure_running()
    prefix = f"restart-{uuid.uuid4().hex[:8]}:"
    return rd, lambda: RedisBus(rd.url, prefix=prefix, buffer_size=BUFFER, backoff_max=backoff_max,
                                health_interval=health_interval)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_two_replicas_and_broker_restart(kind: str, request: pytest.FixtureRequest) -> None:
    server, new_bus = killable_broker(kind, request, backoff_max=1.0, health_interval=2.0)

    async def body() -> None:
        a, b = new_bus(), new_bus()
        b_failed = count_failed_reconnects(b)
        await a.start()
        await b.start()
        try:
            async with b.subscribe("user:9") as sub:
                await a.publish("user:9", {"id": "x", "phase": "before"})
                assert await next_payload(sub) == {"id": "x", "phase": "before"}

                await asyncio.to_thread(server.kill)
                t0 = time.monotonic()
                await asyncio.wait_for(a.publish("user:9", {"id": "x", "phase": "outage"}), WAIT)  # no raise
                outage_publish = time.monotonic() - t0
                # Stay down until replica B has noticed and failed to reconnect twice: its backoff has grown.
                await wait_for_condition(lambda: not b.connected, WAIT)
                await wait_for_condition(lambda: b_failed() >= 2, WAIT)
                await asyncio.to_thread(server.start)
                restarted = time.monotonic()

                async def pub(n: int) -> None:
                    await a.publish("user:9", {"id": "x", "phase": "after", "n": n})

                got, took = await publish_until(pub, sub)
                assert got == {"resync": True}  # first: whatever was published meanwhile is lost, re-read
                got, took = await publish_until(pub, sub)
                assert got["phase"] == "after"
                assert b.reconnects >= 1
                await wait_for_condition(lambda: b.connected, WAIT)
                print(
                    f"{kind}: outage publish {outage_publish:.3f}s, flowing again {took:.2f}s after restart "
                    f"({time.monotonic() - restarted:.2f}s)"
                )
        finally:
            await a.close()
            await b.close()

    run(body())


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_first_publish_after_a_broker_restart_arrives(kind: str, request: pytest.FixtureRequest) -> None:
    """The publisher's pooled connections still point at the killed broker: one PUBLISH, not a retry loop."""
    server, new_bus = killable_broker(kind, request, backoff_max=0.5, health_interval=1.0)

    async def body() -> None:
        a, b = new_bus(), new_bus()
        await a.start()
        await b.start()
        try:
            async with b.subscribe("user:7") as sub:
                await asyncio.gather(*(a.publish("user:7", {"id": "x", "n": n}) for n in range(2)))  # two pooled
                assert [await next_payload(sub) for _ in range(2)] in (
                    [{"id": "x", "n": 0}, {"id": "x", "n": 1}], [{"id": "x", "n": 1}, {"id": "x", "n": 0}])
                await asyncio.to_thread(server.kill)
                await wait_for_condition(lambda: not b.connected, WAIT)
                await asyncio.to_thread(server.start)
                assert await next_payload(sub) == {"resync": True}  # B is back
                await a.publish("user:7", {"id": "x", "n": 2})
                assert await next_payload(sub) == {"id": "x", "n": 2}
        finally:
            await a.close()
            await b.close()

    run(body())


def test_postgres_oversize_payload_becomes_id_only(pg: PrivatePostgres) -> None:
    pg.ensure_running()
    async def body() -> None:
        a = PostgresBus(pg.dsn, buffer_size=BUFFER)
        b = PostgresBus(pg.dsn, buffer_size=BUFFER)
        await a.start()
        await b.start()
        try:
            async with b.subscribe("user:big") as sub:
                await a.publish("user:big", {"id": "u9", "blob": "é" * 4000})  # 8000 bytes of UTF-8
                assert await next_payload(sub) == {"id": "u9", "refetch": True}
                await a.publish("user:big", {"blob": "x" * 9000})  # no id: dropped, no raise
                await a.publish("user:big", {"id": "small"})
                assert await next_payload(sub) == {"id": "small"}
        finally:
            await a.close()
            await b.close()

    run(body())


def test_keyed_subscriptions_get_only_their_record() -> None:
    async def body() -> None:
        bus = LocalBus(buffer_size=BUFFER)
        async with bus.subscribe("user:1", "a") as only_a, bus.subscribe("user:1") as every, \
                bus.subscribe("user:2", "a") as other_user:
            for key in ("b", "a", "c", "a"):
                await bus.publish("user:1", {"id": key})
            assert [p["id"] for p in only_a.drain()] == ["a", "a"]
            assert [p["id"] for p in every.drain()] == ["b", "a", "c", "a"]
            assert other_user.drain() == []
        assert bus._fanout.subs == {}

    run(body())


def test_close_ends_iteration() -> None:
    async def body() -> None:
        bus = LocalBus()
        async with bus.subscribe("user:1") as sub:
            await bus.publish("user:1", {"id": 1})
            await bus.close()
            assert [p async for p in sub] == [{"id": 1}]

    run(body())


def test_postgres_publish_drops_a_connection_left_mid_operation() -> None:
    """A server killed mid-operation can leave asyncpg's protocol in a state where the next execute raises
    InternalClientError ("cannot switch to state ...", seen once in CI under load): publish drops the message and
    the connection, as for any broken one, and never raises (a fake connection: the state cannot be forced)."""
    import asyncpg

    class Broken:
        terminated = False

        def is_closed(self) -> bool:
            return False

        async def execute(self, *args: Any, **kwargs: Any) -> None:
            raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")

        def terminate(self) -> None:
            self.terminated = True

    async def body() -> None:
        bus = PostgresBus("postgresql://postgres@127.0.0.1:1/postgres", buffer_size=BUFFER)
        broken = Broken()
        bus._pub_conn = broken  # type: ignore[assignment]
        await bus.publish("user:1", {"id": "x"})
        assert broken.terminated and bus._pub_conn is None

    run(body())
