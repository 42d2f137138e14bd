"""The exporter's HTTP side, standard library only: used in-process, and as a helper process.

Run as a script (``python -I -S _metrics_helper.py CTL_FD ADDR PORT MAX_AGE_S``) it is the
process that :func:`gil_adapt.serve_metrics` starts by default: it listens on ADDR:PORT,
answers scrapes itself, and asks the program for fresh metrics over the control socket
CTL_FD only when its copy is older than MAX_AGE_S. A GIL-bound program then pays for one
read of the ledger per MAX_AGE_S however often it is scraped, instead of a few GIL
hand-offs per scrape (measured: about 10 % of the throughput of 4 GIL-bound threads
scraped 30 times a second, with the server as a thread of theirs).

Control protocol (a stream socket pair):

* helper -> program, once: ``OK <port>\\n`` or ``ERR <errno> <message>\\n``;
* helper -> program, per refresh: 1 byte ``T`` (text format) or ``O`` (OpenMetrics) and
  a 4-byte sequence number;
* program -> helper: the sequence number, a 4-byte length and the body (length
  0xFFFFFFFF: reading the metrics failed).

The helper exits when the control socket closes (the program closed the server, exited
or died). It never imports gil_adapt, and ignores SIGINT (a Ctrl-C is the program's).
"""
from __future__ import annotations

import select
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          500: "Internal Server Error", 503: "Service Unavailable"}
MAX_REQUEST = 65536
#: A client has this long, from its connection, to send its request and read the answer
#: (a deadline for the whole exchange: a client that trickles a byte at a time is cut off).
CLIENT_DEADLINE_S = 5.0
#: Connections served at once; more wait in the listen backlog.
MAX_CLIENTS = 32
FAILED = 0xFFFFFFFF

GetBody = Callable[[bool], Optional[bytes]]  # openmetrics? -> body, or None: failed


def response(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
             head: bool = False) -> bytes:
    """A complete HTTP/1.0 response (the connection closes after it)."""
    extra = "Allow: GET, HEAD\r\n" if code == 405 else ""
    return (f"HTTP/1.0 {code} {STATUS[code]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            ).encode("latin-1") + (b"" if head else body)


def answer(request: bytes, get_body: GetBody) -> bytes:
    """The response to one request: GET/HEAD of /metrics (and / with a link)."""
    head_end = request.find(b"\r\n\r\n")
    lines = request[:head_end if head_end >= 0 else len(request)].split(b"\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return response(400, b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return response(405, b"only GET and HEAD\n")
    head = method == b"HEAD"
    if target == b"/":
        return response(200, b'<html><body><a href="/metrics">/metrics</a></body></html>\n',
                        "text/html; charset=utf-8", head)
    if target != b"/metrics":
        return response(404, b"only /metrics is served here\n", head=head)
    accept = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"accept":
            accept += value
    om = b"application/openmetrics-text" in accept
    body = get_body(om)
    if body is None:
        return response(500, b"reading the metrics failed\n", head=head)
    return response(200, body, CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT, head)


class _Client:
    __slots__ = ("sock", "request", "out", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.request = b""
        self.out: Optional[bytes] = None  # the response, once the request is complete
        self.deadline = deadline


def serve(lsock: socket.socket, get_body: GetBody, stopping: Callable[[], bool],
          ctl: Optional[socket.socket] = None,
          on_ctl: Optional[Callable[[], bool]] = None, poll_s: Optional[float] = None) -> None:
    """Answers scrapes on the listening socket until ``stopping()`` (checked at least every
    ``poll_s``) or ``on_ctl()`` (called when ``ctl`` is readable) returns True.

    Up to MAX_CLIENTS connections are served at once, each within CLIENT_DEADLINE_S of its
    arrival (request read and response written, non-blocking): slow or idle clients
    never hold up another scrape.
    """
    lsock.setblocking(False)
    clients: Dict[int, _Client] = {}
    try:
        while not stopping():
            now = time.monotonic()
            for c in [c for c in clients.values() if c.deadline <= now]:
                _drop(clients, c)
            waits = [c.deadline - now for c in clients.values()]
            if poll_s is not None:
                waits.append(poll_s)
            timeout = max(0.0, min(waits)) if waits else None
            rlist: List[Any] = [c.sock for c in clients.values() if c.out is None]
            if len(clients) < MAX_CLIENTS:
                rlist.append(lsock)
            if ctl is not None:
                rlist.append(ctl)
            wlist = [c.sock for c in clients.values() if c.out is not None]
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):  # the listening socket was closed: stopping
                return
            if ctl is not None and ctl in readable and on_ctl is not None and on_ctl():
                return
            for sock in writable:
                c = clients.get(sock.fileno())
                if c is not None:
                    _write(clients, c)
            for sock in readable:
                if sock is lsock:
                    _accept(lsock, clients)
                elif sock is not ctl:
                    c = clients.get(sock.fileno())
                    if c is not None:
                        _read(clients, c, get_body)
    finally:
        for c in list(clients.values()):
            _drop(clients, c)


def _accept(lsock: socket.socket, clients: Dict[int, _Client]) -> None:
    while len(clients) < MAX_CLIENTS:
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # out of descriptors, a reset before accept: the next one
            return
        conn.setblocking(False)
        clients[conn.fileno()] = _Client(conn, time.monotonic() + CLIENT_DEADLINE_S)


def _read(clients: Dict[int, _Client], c: _Client, get_body: GetBody) -> None:
    try:
        chunk = c.sock.recv(8192)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        chunk = b""
    if not chunk and not c.request:
        _drop(clients, c)
        return
    c.request += chunk
    if chunk and b"\r\n\r\n" not in c.request and len(c.request) < MAX_REQUEST:
        return
    c.out = answer(c.request, get_body)
    _write(clients, c)


def _write(clients: Dict[int, _Client], c: _Client) -> None:
    try:
        sent = c.sock.send(c.out or b"")
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        _drop(clients, c)
        return
    c.out = (c.out or b"")[sent:]
    if not c.out:
        _drop(clients, c)


def _drop(clients: Dict[int, _Client], c: _Client) -> None:
    clients.pop(c.sock.fileno(), None)
    try:
        c.sock.close()
    except OSError:
        pass


def listen(addr: str, port: int) -> socket.socket:
    """A listening TCP socket on addr:port (raises OSError)."""
    info = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_reply(ctl: socket.socket) -> Optional[Tuple[bytes, Optional[bytes]]]:
    """One framed reply: (sequence number, body or None when it failed); None at EOF."""
    head = _recv_exact(ctl, 8)
    if head is None:
        return None
    length = struct.unpack("!I", head[4:])[0]
    if length == FAILED:
        return head[:4], None
    body = _recv_exact(ctl, length)
    if body is None:
        return None
    return head[:4], body


class _Refresher:
    """The helper's copy of the metrics, refreshed from the program when too old."""

    def __init__(self, ctl: socket.socket, max_age_s: float) -> None:
        self.ctl = ctl
        self.max_age_s = max_age_s
        self.seq = 0
        self.cache: Dict[bool, Tuple[float, bytes]] = {}
        self.program_gone = False

    def body(self, om: bool) -> Optional[bytes]:
        hit = self.cache.get(om)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.max_age_s:
            return hit[1]
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        want = struct.pack("!I", self.seq)
        deadline = now + 5.0
        try:
            self.ctl.sendall((b"O" if om else b"T") + want)
            while True:  # replies to requests that timed out before are skipped
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.ctl], [], [], left)[0]:
                    return hit[1] if hit is not None else None  # busy: serve what we have
                reply = _read_reply(self.ctl)
                if reply is None:
                    self.program_gone = True
                    return None
                if reply[0] == want:
                    break
        except OSError:
            self.program_gone = True
            return None
        if reply[1] is None:
            return None
        self.cache[om] = (time.monotonic(), reply[1])
        return reply[1]


def main(argv: List[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=int(argv[0]))
    addr, port, max_age_s = argv[1], int(argv[2]), float(argv[3])
    try:
        lsock = listen(addr, port)
    except OSError as e:
        ctl.sendall(f"ERR {e.errno or 0} {e.strerror or e}\n".encode("utf-8", "replace"))
        return 1
    ctl.sendall(f"OK {lsock.getsockname()[1]}\n".encode())
    refresher = _Refresher(ctl, max_age_s)

    def ctl_readable() -> bool:  # EOF (the program went away), or a late reply: skipped
        try:
            return _read_reply(ctl) is None
        except OSError:
            return True

    serve(lsock, refresher.body, lambda: refresher.program_gone, ctl, ctl_readable)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
