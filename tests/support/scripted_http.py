"""A tiny HTTP/1.1 server in a thread that answers as a test scripts it: for the lean PutObject's tests.

Each request is read whole (``Content-Length`` bodies; ``Expect: 100-continue`` is answered), recorded as a
:class:`Seen` (with the number of the connection it came on), and answered by ``script(index, seen)``, which
returns a :class:`Reply`: a status, headers and body, and optionally a fault (close the connection after the
answer, reset it instead of answering, wait before answering). Without a script every request gets ``200`` with
an ``ETag`` (the MD5 of the body). Connections are kept alive unless a reply closes them. The script is asked
twice for each request: when its head has come (only ``reset_at_head`` counts then, and ``seen.body`` is
empty) and once its body is read.

    server = ScriptedServer(lambda i, seen: Reply(503, body=SLOW_DOWN) if i == 0 else Reply())
    ...
    server.stop()
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ScriptedServer", "Reply", "Seen", "s3_error"]


@dataclass(frozen=True)
class Seen:
    connection: int
    method: str
    path: str
    #: header names lower-cased; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: close the connection once the answer is written
    close: bool = False
    #: reset the connection (RST) instead of answering
    reset: bool = False
    #: reset the connection as soon as the request's head has come (before its body is read)
    reset_at_head: bool = False
    #: close the connection after the answer without saying so (an idle keep-alive connection the server drops)
    hangup: bool = False
    delay_s: float = 0.0


def s3_error(code: str, message: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>r1</RequestId></Error>").encode()


class ScriptedServer:
    def __init__(self, script: Callable[[int, Seen], Reply] | None = None) -> None:
        self.script = script or (lambda i, seen: Reply())
        self.requests: list[Seen] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._stopping = False
        threading.Thread(target=self._accept, name="scripted-http", daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        self._sock.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                with self._lock:
                    index = len(self.requests)
                peek = self.script(index, Seen(number, method, path, headers, b""))
                if peek.reset_at_head:
                    with self._lock:
                        self.requests.append(Seen(number, method, path, headers, b""))
                    _reset(conn)
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                seen = Seen(number, method, path, headers, body)
                with self._lock:
                    self.requests.append(seen)
                reply = self.script(index, seen)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.reset:
                    _reset(conn)
                    return
                answer = {"ETag": f'"{hashlib.md5(body).hexdigest()}"', "x-amz-request-id": f"req-{index}",  # noqa: S324
                          **reply.headers, "Content-Length": str(len(reply.body))}
                if reply.close:
                    answer["Connection"] = "close"
                out = f"HTTP/1.1 {reply.status} Scripted\r\n" + "".join(f"{k}: {v}\r\n" for k, v in answer.items())
                conn.sendall(out.encode("latin-1") + b"\r\n" + reply.body)
                if reply.close or reply.hangup:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                    return
        except OSError:
            return


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
