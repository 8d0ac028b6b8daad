"""The direct progress channel of a cluster run (mpupload/engine/dask_direct.py) and a worker process's choice of
channel (mpupload/engine/dask_worker.py ``_Process.report``): real UDP sockets on 127.0.0.1, a stand-in for the
Dask worker (its ``log_event``)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from mpupload.engine import dask_direct as D
from mpupload.engine.dask_worker import REPORT_TOPIC, TaskCounter, _Process, _Run

KEY = b"k" * 32


def counts(n: int) -> list[list[Any]]:
    return [[f"mpupload-part-0123456789abcdef-{i}", "0123456789ab", 1_000_000 + i] for i in range(n)]


# -- datagrams --------------------------------------------------------------------------------------------------------


def test_a_sealed_datagram_opens_only_with_its_key_magic_and_bytes() -> None:
    d = D.seal(D.REPORT_MAGIC, KEY, {"r": "run", "c": [[1, 2, 3]]})
    assert D.unseal(D.REPORT_MAGIC, KEY, d) == {"r": "run", "c": [[1, 2, 3]]}
    assert D.unseal(D.REPORT_MAGIC, b"x" * 32, d) is None
    assert D.unseal(D.ACK_MAGIC, KEY, d) is None  # a report is not an ack
    tampered = d[:-2] + bytes([d[-2] ^ 1]) + d[-1:]
    assert D.unseal(D.REPORT_MAGIC, KEY, tampered) is None
    assert D.unseal(D.REPORT_MAGIC, KEY, d[:20]) is None
    assert D.unseal(D.REPORT_MAGIC, KEY, b"") is None
    # authentic but not a JSON object: refused all the same
    raw = b"[1,2]"
    assert D.unseal(D.REPORT_MAGIC, KEY, D.REPORT_MAGIC + D._mac(KEY, D.REPORT_MAGIC, raw) + raw) is None


def test_a_long_report_is_split_into_numbered_datagrams_under_the_mtu() -> None:
    entries = counts(200)
    datagrams = D.report_datagrams(KEY, "run", "tcp://10.0.0.7:40000", "proc", 17, entries)
    assert len(datagrams) > 1
    bodies = [D.unseal(D.REPORT_MAGIC, KEY, d) for d in datagrams]
    assert all(b is not None for b in bodies)
    assert [b["s"] for b in bodies if b] == list(range(17, 17 + len(datagrams)))
    assert all(len(d) - len(D.REPORT_MAGIC) - D.MAC_BYTES <= D.MAX_BODY for d in datagrams)
    assert [e for b in bodies if b for e in b["c"]] == entries
    one = D.report_datagrams(KEY, "run", "w", "proc", 0, counts(2))
    assert len(one) == 1


@pytest.mark.parametrize(("value", "want"), [
    ("off", None), ("OFF", None), ("127.0.0.1", ("127.0.0.1", 0)), ("10.0.0.2:7000", ("10.0.0.2", 7000)),
    ("[::1]:7000", ("::1", 7000)), ("[::1]", ("::1", 0)), ("host.example:1", ("host.example", 1)),
])
def test_the_listen_address_setting_is_read(value: str, want: tuple[str, int] | None) -> None:
    assert D.parse_listen_address(value) == want


@pytest.mark.parametrize("value", ["10.0.0.2:port", "10.0.0.2:70000", ":7000", "[::1]x"])
def test_a_bad_listen_address_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        D.parse_listen_address(value)


def test_the_gate_drops_an_older_report_of_the_same_process() -> None:
    gate = D.SequenceGate()
    assert gate.newer("a", 5)
    assert not gate.newer("a", 5)
    assert not gate.newer("a", 3)
    assert gate.newer("b", 0)  # another process numbers its own
    assert gate.newer("a", 6)
    assert gate.newer(None, None)  # unnumbered: taken


# -- the coordinator's listener -----------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Any:
    got: list[tuple[str | None, list[Any]]] = []
    lst = D.ReportListener("run1", "127.0.0.1", 0, D.SequenceGate(), lambda w, c: got.append((w, c)))
    lst.got = got  # type: ignore[attr-defined]
    yield lst
    lst.close()


def wait_drained(lst: D.ReportListener, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(lst.got) < n and time.monotonic() < deadline:  # type: ignore[attr-defined]
        lst.drain()
        time.sleep(0.005)


def test_the_listener_takes_authentic_reports_in_order_and_acks_the_sender(listener: D.ReportListener) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.settimeout(5)
    target = ("127.0.0.1", listener.address.port)
    try:
        first = D.report_datagrams(listener.address.key, "run1", "tcp://w:1", "proc", 10, counts(2))
        sender.sendto(first[0], target)
        wait_drained(listener, 1)
        assert listener.got == [("tcp://w:1", counts(2))]  # type: ignore[attr-defined]
        ack = D.unseal(D.ACK_MAGIC, listener.address.key, sender.recv(65535))
        assert ack == {"r": "run1", "p": "proc", "s": 10}
        # a forged report, another run's, and an older one of the same process: none reaches the ledger
        sender.sendto(D.report_datagrams(b"z" * 32, "run1", "tcp://w:1", "proc", 11, counts(1))[0], target)
        sender.sendto(D.report_datagrams(listener.address.key, "run2", "tcp://w:1", "proc", 12, counts(1))[0],
                      target)
        sender.sendto(D.report_datagrams(listener.address.key, "run1", "tcp://w:1", "proc", 9, counts(1))[0], target)
        sender.sendto(D.report_datagrams(listener.address.key, "run1", "tcp://w:1", "proc", 13, counts(3))[0],
                      target)
        wait_drained(listener, 2)
        assert listener.got[1:] == [("tcp://w:1", counts(3))]  # type: ignore[attr-defined]
        assert listener.rejected == 2 and listener.received == 2
    finally:
        sender.close()


def test_the_listener_acks_a_process_at_most_once_a_second(listener: D.ReportListener) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    target = ("127.0.0.1", listener.address.port)
    try:
        for seq in range(5):
            sender.sendto(D.report_datagrams(listener.address.key, "run1", "w", "proc", seq, counts(1))[0], target)
            wait_drained(listener, seq + 1)
        time.sleep(0.05)
        acks = []
        while True:
            try:
                acks.append(D.unseal(D.ACK_MAGIC, listener.address.key, sender.recv(65535)))
            except BlockingIOError:
                break
        assert len(acks) == 1 and acks[0] == {"r": "run1", "p": "proc", "s": 0}, acks
    finally:
        sender.close()


# -- a worker process's choice of channel -------------------------------------------------------------------------


class FakeWorker:
    address = "tcp://127.0.0.1:40001"

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def log_event(self, topic: str, message: dict[str, Any]) -> None:
        self.events.append((topic, message))


def process_with_run(report_to: D.ReportAddress | None) -> tuple[_Process, FakeWorker, TaskCounter]:
    state = _Process()
    worker = FakeWorker()
    state._worker = worker
    run = state.runs["run1"] = _Run("run1", worker.address, report_to)
    counter = TaskCounter()
    counter.set(0, 12345)
    run.running["mpupload-part-run1-1"] = ("nonce1", counter)
    return state, worker, counter


def test_a_worker_relays_until_the_coordinator_acks_then_sends_datagrams_only(listener: D.ReportListener) -> None:
    state, worker, counter = process_with_run(listener.address)
    state.report()  # no ack yet: both channels
    assert [t for t, _ in worker.events] == [REPORT_TOPIC]
    relayed = worker.events[0][1]
    assert relayed["counts"] == [["mpupload-part-run1-1", "nonce1", 12345]] and relayed["p"] == state.process_id
    wait_drained(listener, 1)
    assert listener.got == [(worker.address, [["mpupload-part-run1-1", "nonce1", 12345]])]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    counter.set(0, 22222)
    while state.runs["run1"].acked_at is None and time.monotonic() < deadline:
        state._read_acks()
        time.sleep(0.005)
    state.report()  # acked: the datagram alone
    assert len(worker.events) == 1
    wait_drained(listener, 2)
    assert listener.got[-1] == (worker.address, [["mpupload-part-run1-1", "nonce1", 22222]])  # type: ignore[attr-defined]
    assert relayed["s"] > 0  # the relayed copy is numbered after its datagram: the later one of the two wins
    # acks stop coming (the coordinator is gone, or a firewall): the reports go through the scheduler again
    state.runs["run1"].acked_at = time.monotonic() - D.ACK_STALE_S - 0.1
    listener.close()
    state.report()
    assert len(worker.events) == 2 and worker.events[1][1]["counts"][0][2] == 22222


def test_a_worker_whose_datagrams_go_nowhere_relays_every_report() -> None:
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    port = hole.getsockname()[1]
    hole.close()  # nothing listens there: no ack ever comes
    state, worker, counter = process_with_run(D.ReportAddress("127.0.0.1", port, KEY))
    for n in range(3):
        counter.set(0, 1000 * (n + 1))
        state.report()
        time.sleep(0.01)
    assert [m["counts"][0][2] for _, m in worker.events] == [1000, 2000, 3000]
    seqs = [m["s"] for _, m in worker.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_a_worker_without_a_report_address_relays_as_before() -> None:
    state, worker, _ = process_with_run(None)
    state.report()
    state.report()
    assert len(worker.events) == 2
    assert json.dumps(worker.events[0][1])  # plain data on the scheduler's stream
