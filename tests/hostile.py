"""Hostile and broken servers: raw sockets on 127.0.0.1, written with the standard library.

Each `HostileServer` hands every connection it accepts to a behaviour, a function that
reads the request and writes whatever bytes it likes: a status line a byte at a time,
endless `100 Continue`s, a body that never ends, a gzip bomb, garbage where JSON should be.
A behaviour stops when the client hangs up or the server is closed, so no test leaves a
thread writing. Nothing here parses or validates like a real server would: that is the
point.
"""
from __future__ import annotations

import gzip
import json
import socket
import threading
from typing import Any, Callable, Dict, List, Optional

UUID = "0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"  # the experiment every hostile test asks for


class Client:
    """One accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, closing: threading.Event):
        self.sock, self.closing = sock, closing
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self) -> Optional[bytes]:
        """The next request (head and body, by Content-Length), or None once the client has
        hung up."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self._recv()
            if not chunk:
                return None
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = self._recv()
            if not chunk:
                return None
            rest += chunk
        self.buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def send(self, data: bytes) -> bool:
        """Write `data`; False once the client is gone (or the server closing)."""
        if self.closing.is_set():
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def trickle(self, data: bytes, every: float) -> bool:
        """Write `data` a byte at a time, one every `every` seconds."""
        for position in range(len(data)):
            if not self.send(data[position:position + 1]) or self.closing.wait(every):
                return False
        return True

    def wait(self, seconds: float) -> None:
        self.closing.wait(seconds)


Behaviour = Callable[[Client, int], None]  # the client, and the connection's number (from 1)


class HostileServer:
    """Accepts connections on 127.0.0.1 and hands each to `behave` on a thread of its own."""

    def __init__(self, behave: Behaviour):
        self.behave = behave
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.connections = 0
        self.requests: List[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        client = Client(sock, self.closing)
        original = client.request

        def logged() -> Optional[bytes]:
            request = original()
            if request is not None:
                with self.lock:
                    self.requests.append(request)
            return request

        client.request = logged  # type: ignore[method-assign]
        try:
            self.behave(client, number)
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()

    def __enter__(self) -> "HostileServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- what the behaviours send ------------------------------------------------------------

def head(status: str = "200 OK", headers: Optional[Dict[str, str]] = None,
         length: Optional[int] = None, version: str = "HTTP/1.1") -> bytes:
    """A status line and headers, as bytes (latin-1, so any byte a test wants can go in)."""
    lines = [f"{version} {status}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(body: bytes, status: str = "200 OK", content_type: str = "application/json",
           **headers: str) -> bytes:
    return head(status, {"Content-Type": content_type, **headers}, len(body)) + body


def root_event(number: int, **fields: Any) -> Dict[str, Any]:
    """A test case's root span, as the API sends it (fields may override any part)."""
    trace = f"trace-{number}"
    event = {"id": f"row-{number}", "_xact_id": str(1000 + number),
             "created": "2026-11-20T10:00:00.000Z", "project_id": "p", "experiment_id": UUID,
             "span_id": trace, "root_span_id": trace, "is_root": True,
             "span_attributes": {"type": "eval"}, "input": f"question {number}",
             "output": f"answer {number}", "expected": None, "metadata": {},
             "scores": {"Exact Match": 1}}
    event.update(fields)
    return event


def page(events: List[Dict[str, Any]], cursor: Any = None) -> bytes:
    body: Dict[str, Any] = {"events": events}
    if cursor is not None:
        body["cursor"] = cursor
    return json.dumps(body).encode()


def serve_pages(*bodies: bytes, **headers: str) -> Behaviour:
    """Answer each request, on any connection, with the next of `bodies` (then the last
    again), keeping the connection alive as the real API does."""
    served = [0]
    lock = threading.Lock()

    def behave(client: Client, number: int) -> None:
        while client.request() is not None:
            with lock:
                body = bodies[min(served[0], len(bodies) - 1)]
                served[0] += 1
            if not client.send(answer(body, **headers)):
                return
    return behave


def gzip_bomb(size: int) -> bytes:
    """`size` bytes of JSON-looking nothing, gzipped into about a thousandth of that."""
    return gzip.compress(b'{"events": [' + b" " * (size - 14) + b"]}", compresslevel=9)


def serve_by_cursor(bodies: Dict[Optional[str], bytes]) -> Behaviour:
    """Answer each fetch by the cursor in its JSON body (None: the first page), as a server
    that pages by cursor does, however the client walks them."""
    def behave(client: Client, number: int) -> None:
        while True:
            request = client.request()
            if request is None:
                return
            _, _, body = request.partition(b"\r\n\r\n")
            cursor = json.loads(body or b"{}").get("cursor")
            if not client.send(answer(bodies[cursor])):
                return
    return behave
