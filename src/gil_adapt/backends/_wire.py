"""Messages between the parent and a worker process: one frame = header + body.

Header ``!BQQ``: kind, task id, body length. Result and error bodies start with the
task's figures (``!QQQQq``: cpu ns, wall ns, peak RSS bytes, RSS bytes, ns the task held
the worker's GIL or -1 where the worker cannot measure it, all measured in the worker)
followed by the payload. Used by both sides; nothing here imports the backends.
"""
from __future__ import annotations

import socket
import struct
from typing import Optional, Tuple

HEADER = struct.Struct("!BQQ")
FIGURES = struct.Struct("!QQQQq")

# parent -> worker
PREPARE = 1    # body: pickle of (preparation data, initializer, initargs)
TASK = 2       # body: pickle of (fn, args, kwargs)
STOP = 3       # no body: finish and exit 0
# worker -> parent
HELLO = 10     # body: FIGURES (0, 0, peak RSS, RSS, -1) once prepared
RESULT = 11    # body: FIGURES + pickled result
ERROR = 12     # body: FIGURES + pickle of (exception, traceback text)
ERROR_TEXT = 13        # body: FIGURES + utf-8 "type: text\n\ntraceback" (exception not picklable)
RESULT_UNPICKLABLE = 14  # body: FIGURES + utf-8 text of the pickling error
TASK_UNPICKLABLE = 15    # body: FIGURES + utf-8 text of the unpickling error + traceback
INIT_FAILED = 16         # body: utf-8 traceback of the preparation/initializer failure


def send(sock: socket.socket, kind: int, task_id: int = 0, body: bytes = b"",
         prefix: bytes = b"") -> None:
    """Sends one frame (blocking); ``prefix`` goes before ``body`` without a copy of it."""
    header = HEADER.pack(kind, task_id, len(prefix) + len(body))
    if len(body) < 65536:
        sock.sendall(header + prefix + body)
    else:
        sock.sendall(header + prefix)
        sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytearray]:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return buf


def recv(sock: socket.socket) -> Optional[Tuple[int, int, bytearray]]:
    """Receives one whole frame (blocking): (kind, task id, body), or None at end of file."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    kind, task_id, length = HEADER.unpack(header)
    body = _recv_exact(sock, length) if length else bytearray()
    if body is None:
        return None
    return kind, task_id, body


class FrameReader:
    """Splits bytes read without blocking into whole frames (the parent's side)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list:
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER.size:
            kind, task_id, length = HEADER.unpack_from(buf, pos)
            end = pos + HEADER.size + length
            if len(buf) < end:
                break
            out.append((kind, task_id, bytes(buf[pos + HEADER.size:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def pending(self) -> int:
        return len(self._buf)
