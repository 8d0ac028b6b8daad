"""The direct progress channel of a cluster run: each worker process sends its counts straight to the coordinator
in UDP datagrams, instead of through the scheduler.

Why: a report relayed by the scheduler (``Worker.log_event`` -> the scheduler -> the client's stream) costs the
coordinator's Dask event loop about a quarter of a millisecond, and every worker process sends one every
:data:`~.dask_worker.REPORT_S`; that was about half of the coordinator's CPU during a transfer. A datagram read by a
plain socket in a thread of its own costs a few tens of microseconds.

* **The coordinator** listens on a UDP port of the address it reaches the scheduler from (the interface the
  workers most likely reach it on), or on ``MPUPLOAD_CLUSTER_REPORT_ADDRESS`` (``HOST`` or ``HOST:PORT``; ``off``
  turns the channel off). Where it listens, and the run's random 32-byte key, go with every task
  (:class:`ReportAddress` in the run's :class:`~.dask_worker.RunSpec`). The key only authenticates reports: it
  opens nothing else, and it is worth nothing after the run.
* **A datagram** is ``MAGIC`` + the first 16 bytes of ``HMAC-SHA256(key, MAGIC + body)`` + ``body``, a JSON object:
  ``{"r": run, "w": worker address, "p": process id, "s": sequence number, "c": [[task key, execution nonce,
  bytes], ...]}``. A report too long for one datagram (:data:`MAX_BODY` bytes, under a path MTU) is split: each
  count is absolute, so any subset is a valid report. Anything that fails the check is dropped unread.
* **Order**: each worker process numbers its reports (datagrams and relayed messages alike); the coordinator keeps
  the highest number per process and drops an older report that arrives late, so a count never goes back to an
  earlier value because two reports crossed.
* **Reading**: the coordinator's main thread reads the datagrams waiting when it wants the total (a few times a
  second, to draw it): no thread of its own wakes per datagram.
* **Acks**: the coordinator answers a sender's datagrams with an ack to its address and port (NAT-friendly, as a
  DNS reply), at most every :data:`ACK_EVERY_S`. A worker process that has had no ack for a run in
  :data:`ACK_STALE_S` (at the start, before the first ack; or when a firewall drops the datagrams or the acks)
  sends its reports through the scheduler as well, so progress never depends on this channel; datagrams keep
  going, and the relayed copies stop once acks come back.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ReportAddress", "ReportListener", "SequenceGate", "seal", "unseal", "report_datagrams", "ack_datagram",
           "parse_listen_address", "REPORT_MAGIC", "ACK_MAGIC", "MAX_BODY", "ACK_STALE_S", "ADDRESS_ENV"]

log = logging.getLogger("mpupload")

REPORT_MAGIC = b"MPR1"
ACK_MAGIC = b"MPA1"
MAC_BYTES = 16
#: the most body bytes in one datagram: with its header and UDP/IP's, under the 1280-byte IPv6 minimum MTU
MAX_BODY = 1150
#: a worker process with no ack for a run in this long also sends that run's reports through the scheduler
ACK_STALE_S = 3.0
#: the coordinator acks a worker process's datagrams at most this often
ACK_EVERY_S = 1.0
#: where the coordinator listens (``HOST`` or ``HOST:PORT``), or ``off``
ADDRESS_ENV = "MPUPLOAD_CLUSTER_REPORT_ADDRESS"


@dataclass(frozen=True)
class ReportAddress:
    """Where a run's workers send their reports, and the key that authenticates them."""

    host: str
    port: int
    key: bytes

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"ReportAddress({self.host!r}, {self.port})"


def _mac(key: bytes, magic: bytes, body: bytes) -> bytes:
    return hmac.digest(key, magic + body, "sha256")[:MAC_BYTES]


def seal(magic: bytes, key: bytes, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return magic + _mac(key, magic, raw) + raw


def unseal(magic: bytes, key: bytes, datagram: bytes) -> dict[str, Any] | None:
    """The body of an authentic datagram of this kind, else None (nothing unauthenticated is parsed)."""
    head = len(magic) + MAC_BYTES
    if len(datagram) <= head or datagram[:len(magic)] != magic:
        return None
    raw = datagram[head:]
    if not hmac.compare_digest(datagram[len(magic):head], _mac(key, magic, raw)):
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def report_datagrams(key: bytes, run_id: str, worker: str, process: str, first_seq: int,
                     counts: Sequence[Sequence[Any]]) -> list[bytes]:
    """One run's counts as datagrams of at most :data:`MAX_BODY` body bytes, numbered from ``first_seq``."""
    out: list[bytes] = []
    batch: list[Sequence[Any]] = []
    size = 0
    overhead = len(json.dumps({"r": run_id, "w": worker, "p": process, "s": first_seq + len(counts), "c": []}))
    for entry in counts:
        n = len(json.dumps(entry, separators=(",", ":"))) + 1
        if batch and overhead + size + n > MAX_BODY:
            out.append(seal(REPORT_MAGIC, key, {"r": run_id, "w": worker, "p": process, "s": first_seq + len(out),
                                                "c": batch}))
            batch, size = [], 0
        batch.append(entry)
        size += n
    if batch or not out:
        out.append(seal(REPORT_MAGIC, key, {"r": run_id, "w": worker, "p": process, "s": first_seq + len(out),
                                            "c": batch}))
    return out


def ack_datagram(key: bytes, run_id: str, process: str, seq: int) -> bytes:
    return seal(ACK_MAGIC, key, {"r": run_id, "p": process, "s": seq})


def parse_listen_address(value: str) -> tuple[str, int] | None:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ``off`` -> None; else ValueError."""
    value = value.strip()
    if value.lower() in ("off", "none", "0", "no"):
        return None
    host, port = value, 0
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(value)
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        port = int(p)
    if not host or not 0 <= port <= 65535:
        raise ValueError(value)
    return host, port


class SequenceGate:
    """The newest report number seen per worker process (thread-safe): an older report that arrives late (the
    other channel, or a reordered datagram) is dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def newer(self, process: Any, seq: Any) -> bool:
        if not isinstance(process, str) or not isinstance(seq, int):
            return True  # an unnumbered report (nothing to order it by): taken
        with self._lock:
            if seq <= self._last.get(process, -1):
                return False
            self._last[process] = seq
            return True


class ReportListener:
    """The coordinator's end: a non-blocking UDP socket that the main thread drains (:meth:`drain`) when it wants
    the total, a few times a second. No thread wakes per datagram: a wake-up costs more on a busy machine than
    reading the datagram, and the counts are only wanted when the total is drawn."""

    #: the most datagrams one :meth:`drain` reads (a flood of junk cannot hold the main thread)
    MAX_PER_DRAIN = 4096

    def __init__(self, run_id: str, host: str, port: int, gate: SequenceGate,
                 on_counts: Callable[[str | None, list[Any]], None]) -> None:
        self.run_id = run_id
        self.gate = gate
        self.on_counts = on_counts
        self.received = 0
        self.rejected = 0
        self._lock = threading.Lock()
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            self._sock.bind(info[4])
            self._sock.setblocking(False)
            # a few seconds of reports from many workers wait here while the main thread is busy (a complete)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            self._sock.close()
            raise
        self.address = ReportAddress(host, int(self._sock.getsockname()[1]), secrets.token_bytes(32))
        self._closed = False
        #: when each worker process was last acked
        self._acked: dict[str, float] = {}

    def drain(self) -> int:
        """Read the datagrams waiting; hand each authentic, newer report to ``on_counts``; ack each sender once.
        How many reports were taken."""
        key = self.address.key
        taken = 0
        with self._lock:
            if self._closed:
                return 0
            acks: dict[tuple[str, Any], int] = {}
            for _ in range(self.MAX_PER_DRAIN):
                try:
                    datagram, peer = self._sock.recvfrom(65535)
                except OSError:  # nothing waiting (BlockingIOError), or an error queued on the socket
                    break
                body = unseal(REPORT_MAGIC, key, datagram)
                if body is None or body.get("r") != self.run_id or not isinstance(body.get("c"), list):
                    self.rejected += 1
                    continue
                process, seq = body.get("p"), body.get("s")
                if isinstance(process, str) and isinstance(seq, int):
                    acks[(process, peer)] = max(seq, acks.get((process, peer), seq))
                if not self.gate.newer(process, seq):
                    continue
                self.received += 1
                taken += 1
                try:
                    self.on_counts(body.get("w") if isinstance(body.get("w"), str) else None, body["c"])
                except Exception:  # noqa: BLE001 - a malformed entry from an authentic sender: drop that report
                    log.debug("a progress datagram could not be read", exc_info=True)
            now = time.monotonic()
            for (process, peer), seq in acks.items():  # acked even when late: the sender learns the channel works
                if now - self._acked.get(process, -ACK_EVERY_S) < ACK_EVERY_S:
                    continue
                self._acked[process] = now
                with contextlib.suppress(OSError):
                    self._sock.sendto(ack_datagram(key, self.run_id, process, seq), peer)
        return taken

    def close(self) -> None:
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.close()


def listen_for(run_id: str, default_host: str | None, gate: SequenceGate,
               on_counts: Callable[[str | None, list[Any]], None]) -> ReportListener | None:
    """The run's listener where :data:`ADDRESS_ENV` or ``default_host`` says; None when turned off or impossible
    (the reports then all go through the scheduler)."""
    configured = os.environ.get(ADDRESS_ENV, "").strip()
    try:
        where = parse_listen_address(configured) if configured else (default_host, 0) if default_host else None
    except ValueError:
        log.warning("%s=%s is not HOST, HOST:PORT or off: the workers' progress goes through the scheduler",
                    ADDRESS_ENV, configured)
        return None
    if where is None:
        return None
    try:
        return ReportListener(run_id, where[0], where[1], gate, on_counts)
    except OSError as exc:
        (log.warning if configured else log.debug)(
            "cannot listen for the workers' progress on %s port %s (%s): it goes through the scheduler", where[0],
            where[1], exc.strerror or exc)
        return None
