"""The loopback server the workloads' I/O talks to, and its sync and async clients.

The server is a small asyncio TCP server in its own process (started by the harness,
outside the configuration's cgroup). Each request says how long the server waits before
answering (the simulated latency of a camera, a microphone, a vector store, an LLM API...)
and what it answers with. Connections are kept open and reused.

Wire format (network byte order):

* request: ``kind:u8 chunks:u16 delay_us:u32 size:u32 payload_len:u32`` + payload
* response: frames ``len:u32`` + bytes, ended by a frame of length 0. ``chunks`` > 1
  streams that many frames, spaced evenly over the delay (a token stream).

Kinds: ``RAW`` (``size`` bytes of seeded random data: frames, audio), ``DOCS`` (a JSON
list of ``size`` retrieved documents), ``CSV`` (``size`` rows of telemetry), ``TOKENS``
(``chunks`` frames of ``size`` bytes of token ids), ``ANSWER`` (a JSON LLM-API answer).

``python -m gil_adapt.bench.loopback [--port 0]`` serves until stdin closes or the parent
dies, and first prints ``PORT <n>`` on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import signal
import socket
import struct
import sys
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("gil_adapt.bench")

HEADER = struct.Struct("!BHIII")
FRAME = struct.Struct("!I")
RAW, DOCS, CSV, TOKENS, ANSWER = range(5)
SEED = 20240601

Address = Tuple[str, int]


# ---- content (deterministic, built once per server) -----------------------------------

def _words(rng: random.Random, n: int) -> List[str]:
    syll = ["ka", "lo", "mi", "ra", "ten", "sor", "vel", "qu", "an", "is", "ed", "on", "ur"]
    return ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(n)]


class Content:
    """Seeded payloads for each kind, built lazily and cached."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.raw = bytes(self.rng.getrandbits(8) for _ in range(1 << 16)) * 64  # 4 MiB
        self.vocab = _words(self.rng, 2000)
        self._cache: Dict[Tuple[int, int], bytes] = {}

    def get(self, kind: int, size: int) -> bytes:
        if kind == RAW or kind == TOKENS:
            if size <= len(self.raw):
                return self.raw[:size]
            return (self.raw * (size // len(self.raw) + 1))[:size]
        key = (kind, size)
        data = self._cache.get(key)
        if data is None:
            data = self._build(kind, size)
            self._cache[key] = data
        return data

    def _build(self, kind: int, size: int) -> bytes:
        rng = random.Random(SEED + kind * 1000003 + size)
        if kind == DOCS:
            docs = []
            for i in range(size):
                text = " ".join(rng.choice(self.vocab) for _ in range(80))
                docs.append({
                    "id": f"doc-{i:05d}", "title": " ".join(rng.choice(self.vocab)
                                                            for _ in range(5)),
                    "text": text, "score": round(rng.random(), 6),
                    "embedding": [round(rng.uniform(-1, 1), 5) for _ in range(32)],
                    "metadata": {"source": rng.choice(["wiki", "manual", "ticket", "mail"]),
                                 "page": rng.randint(1, 400), "lang": "en"}})
            return json.dumps({"matches": docs, "namespace": "edge"}).encode()
        if kind == CSV:
            lines = ["ts,device,temperature,humidity,voltage"]
            t0 = 1_700_000_000_000
            for i in range(size):
                lines.append(f"{t0 + i * 250},dev-{i % 8},{20 + rng.gauss(0, 3):.3f},"
                             f"{45 + rng.gauss(0, 8):.3f},{3.3 + rng.gauss(0, 0.05):.4f}")
            return ("\n".join(lines) + "\n").encode()
        if kind == ANSWER:
            text = " ".join(rng.choice(self.vocab) for _ in range(120))
            return json.dumps({"id": "cmpl-edge", "object": "chat.completion",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant",
                                                        "content": text}}],
                               "usage": {"prompt_tokens": 900, "completion_tokens": 160}
                               }).encode()
        raise ValueError(f"unknown kind {kind}")


# ---- server ---------------------------------------------------------------------------

async def _handle(content: Content, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    try:
        while True:
            head = await reader.readexactly(HEADER.size)
            kind, chunks, delay_us, size, plen = HEADER.unpack(head)
            if plen:
                await reader.readexactly(plen)
            chunks = max(1, chunks)
            data = content.get(kind, size)
            step = delay_us / 1e6 / chunks
            for _ in range(chunks):
                if step > 0:
                    await asyncio.sleep(step)
                writer.write(FRAME.pack(len(data)))
                writer.write(data)
                await writer.drain()
            writer.write(FRAME.pack(0))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
        pass  # the client went away, or the server is stopping
    finally:
        try:
            writer.close()
        except Exception:  # pragma: no cover - closing a broken transport
            pass


def raise_nofile_limit() -> int:
    """Raises the soft open-file limit to the hard one (2048 threads need 2048 sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _quiet_resets(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
    """Clients are killed mid-exchange at the end of every run: a connection reset is
    expected here, not an error to log (some asyncio versions log it from the stream's
    internal futures); anything else goes to the default handler."""
    if isinstance(context.get("exception"), ConnectionError):
        return
    loop.default_exception_handler(context)


async def serve(host: str, port: int, ready: Optional[threading.Event] = None,
                out: Optional[list] = None) -> None:
    asyncio.get_running_loop().set_exception_handler(_quiet_resets)
    content = Content()
    server = await asyncio.start_server(lambda r, w: _handle(content, r, w), host, port,
                                        backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if out is not None:
        out.append(bound)
    if ready is not None:
        ready.set()
    else:
        sys.stdout.write(f"PORT {bound}\n")
        sys.stdout.flush()
    async with server:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        if ready is None:
            # stdin closing (the harness exiting, or closing the pipe) stops the server
            def _eof() -> None:
                try:
                    if not os.read(0, 4096) and not stop.done():
                        stop.set_result(None)
                except OSError:
                    if not stop.done():
                        stop.set_result(None)
            try:
                loop.add_reader(0, _eof)
            except (OSError, ValueError, NotImplementedError):
                pass
        await stop


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gil_adapt.bench.loopback")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    set_parent_death_signal()
    raise_nofile_limit()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


# ---- sync client: one kept-open connection per thread ---------------------------------

class _Local(threading.local):
    sock: Optional[socket.socket] = None
    rfile = None
    pid: int = 0
    addr: Optional[Address] = None


_local = _Local()


def _connect(addr: Address) -> None:
    sock = socket.create_connection(addr, timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _local.sock = sock
    _local.rfile = sock.makefile("rb", buffering=1 << 16)
    _local.pid = os.getpid()
    _local.addr = addr


def _close() -> None:
    for obj in (_local.rfile, _local.sock):
        try:
            if obj is not None:
                obj.close()
        except OSError:
            pass
    _local.sock = _local.rfile = None


def request(addr: Address, kind: int, delay_s: float, size: int, payload: bytes = b"",
            chunks: int = 1) -> List[bytes]:
    """One request over this thread's connection; returns the response's frames."""
    head = HEADER.pack(kind, chunks, int(delay_s * 1e6), size, len(payload))
    for attempt in (0, 1):
        if _local.sock is None or _local.pid != os.getpid() or _local.addr != addr:
            _connect(addr)
        try:
            _local.sock.sendall(head + payload if len(payload) < 65536 else head)
            if len(payload) >= 65536:
                _local.sock.sendall(payload)
            frames: List[bytes] = []
            rfile = _local.rfile
            while True:
                n = FRAME.unpack(_read_exact(rfile, 4))[0]
                if n == 0:
                    return frames
                frames.append(_read_exact(rfile, n))
        except (OSError, EOFError):
            _close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _read_exact(rfile, n: int) -> bytes:
    data = rfile.read(n)
    if data is None or len(data) != n:
        raise EOFError("loopback server closed the connection")
    return data


# ---- async client: a pool of kept-open connections per event loop ---------------------

_apools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list]" = \
    weakref.WeakKeyDictionary()


async def arequest(addr: Address, kind: int, delay_s: float, size: int,
                   payload: bytes = b"", chunks: int = 1) -> List[bytes]:
    """The async form of :func:`request` (asyncio streams)."""
    loop = asyncio.get_running_loop()
    pool = _apools.setdefault(loop, [])
    head = HEADER.pack(kind, chunks, int(delay_s * 1e6), size, len(payload))
    for attempt in (0, 1):
        if pool:
            reader, writer = pool.pop()
        else:
            reader, writer = await asyncio.open_connection(addr[0], addr[1], limit=1 << 22)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            writer.write(head + payload)
            await writer.drain()
            frames: List[bytes] = []
            while True:
                n = FRAME.unpack(await reader.readexactly(4))[0]
                if n == 0:
                    break
                frames.append(await reader.readexactly(n))
            pool.append((reader, writer))
            return frames
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


class ServerProcess:
    """The server in a child process (started by the harness, stopped on close)."""

    def __init__(self, host: str = "127.0.0.1", cpus: Optional[List[int]] = None) -> None:
        import subprocess

        self.host = host
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gil_adapt.bench.loopback", "--host", host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode().strip() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"loopback server did not start (said {line!r})")
        self.port = int(line.split()[1])
        if cpus:
            self.set_cpus(cpus)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def set_cpus(self, cpus: List[int]) -> None:
        try:
            os.sched_setaffinity(self.proc.pid, set(cpus))
        except OSError as e:
            log.warning("could not pin the loopback server to %s: %s", cpus, e)

    def cpu_seconds(self) -> Optional[float]:
        """User + system CPU time the server has used (from /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
