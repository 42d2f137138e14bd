"""The worker process of ProcessBackend: runs one task at a time from its socket.

Started by exec (``python -c``), so nothing of the parent's threads or locks is inherited.
It applies the parent's preparation data (``sys.path``, working directory, and — unless
the backend says not to — the parent's ``__main__`` as ``__mp_main__``, exactly as
multiprocessing's spawn does), runs the initializer, says hello with its resident size,
then loops: task in, result or error out, each with its CPU time, wall time, peak and
current resident size. It ignores SIGINT (the parent decides when workers stop), makes
itself the OOM killer's preferred victim over the parent, and exits when the parent is
gone or its socket closes.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Tuple


from . import _wire

PAGE = os.sysconf("SC_PAGE_SIZE")
#: oom_score_adj a worker raises itself to: a worker dies before the parent that holds
#: every future (raising is allowed without privileges).
OOM_SCORE_ADJ = 500
_TB_LEN = struct.Struct("!I")
#: True while this worker imports the parent's main module (ProcessBackend refuses to start).
BOOTSTRAPPING = False
#: The C core once its hook measures this worker's GIL (see _install_hook), else None.
_core: Any = None


def rss_now() -> int:
    """This process's resident size in bytes (/proc/self/statm)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> int:
    """This process's peak resident size in bytes since the last reset_peak() (VmHWM).

    Not getrusage's ru_maxrss: after exec that also counts the parent's image.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_now()


def reset_peak() -> None:
    """Starts a new peak (VmHWM) at the current resident size: one task's peak is its own."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
    except OSError:  # not allowed here: the peak stays the worker's lifetime peak
        pass


def _gil_held_ns() -> int:
    """This thread's time holding the GIL so far (the C core's hook), -1 where unknown."""
    if _core is None:
        return -1
    return int(_core.self_times()[3])


def _figures(cpu0: int, wall0: int, held0: int) -> bytes:
    held1 = _gil_held_ns() if held0 >= 0 else -1
    return _wire.FIGURES.pack(max(0, time.process_time_ns() - cpu0),
                              max(0, time.perf_counter_ns() - wall0), peak_rss(), rss_now(),
                              max(0, held1 - held0) if held1 >= 0 else -1)


def _install_hook() -> None:
    """Measures how much of each task's CPU holds this worker's GIL (Python) and how much
    does not (native code that releases it): the parent moves work whose CPU no longer
    holds the GIL back to threads. Without the hook the figure is -1 (unknown)."""
    global _core
    try:
        from gil_adapt import _core as core

        if core.install() == 0 and core.self_times()[3] >= 0:
            _core = core
    except Exception:  # no C core here: the figure stays unknown
        _core = None


def _raise_oom_score() -> None:
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            if int(f.read().strip() or 0) < OOM_SCORE_ADJ:
                f.seek(0)
                f.write(str(OOM_SCORE_ADJ))
    except (OSError, ValueError):
        pass


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="gil_adapt-parent-watch", daemon=True).start()


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # a broken __str__
        text = "<str() failed>"
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {text}"


def _run(sock: socket.socket, task_id: int, body: bytearray) -> None:
    reset_peak()
    cpu0, wall0, held0 = time.process_time_ns(), time.perf_counter_ns(), _gil_held_ns()
    try:
        fn, args, kwargs = pickle.loads(body)
    except BaseException as exc:  # the function's module not importable here, ...
        text = f"{_describe(exc)}\n\n{traceback.format_exc()}"
        _wire.send(sock, _wire.TASK_UNPICKLABLE, task_id, text.encode("utf-8", "replace"),
                   prefix=_figures(cpu0, wall0, held0))
        return
    del body
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        tb = traceback.format_exc()
        figures = _figures(cpu0, wall0, held0)
        try:
            payload = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        except BaseException:
            text = f"{_describe(exc)}\n\n{tb}"
            _wire.send(sock, _wire.ERROR_TEXT, task_id, text.encode("utf-8", "replace"),
                       prefix=figures)
            return
        tb_bytes = tb.encode("utf-8", "replace")
        _wire.send(sock, _wire.ERROR, task_id, payload,
                   prefix=figures + _TB_LEN.pack(len(tb_bytes)) + tb_bytes)
        return
    del fn, args, kwargs
    figures = _figures(cpu0, wall0, held0)
    try:
        payload = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        text = f"result of type {type(result).__qualname__} could not be pickled: {_describe(exc)}"
        _wire.send(sock, _wire.RESULT_UNPICKLABLE, task_id, text.encode("utf-8", "replace"),
                   prefix=figures)
        return
    del result
    _wire.send(sock, _wire.RESULT, task_id, payload, prefix=figures)


def _prepare(body: bytearray) -> None:
    global BOOTSTRAPPING
    prep, init_payload = pickle.loads(body)
    from multiprocessing import spawn

    BOOTSTRAPPING = True
    try:
        spawn.prepare(prep)
    finally:
        BOOTSTRAPPING = False
    if init_payload:
        initializer, initargs = pickle.loads(init_payload)
        initializer(*initargs)


def main(argv: Tuple[str, ...] = ()) -> None:
    """Entry point: ``main((socket_fd, parent_pid))`` (defaults to ``sys.argv[1:3]``)."""
    args = argv or tuple(sys.argv[1:3])
    fd, parent_pid = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _raise_oom_score()
    sock = socket.socket(fileno=fd)
    _watch_parent(parent_pid)
    frame = _wire.recv(sock)
    if frame is None or frame[0] != _wire.PREPARE:
        os._exit(3)
    try:
        _prepare(frame[2])
    except BaseException as exc:
        text = f"{_describe(exc)}\n\n{traceback.format_exc()}"
        try:
            _wire.send(sock, _wire.INIT_FAILED, 0, text.encode("utf-8", "replace"))
        finally:
            os._exit(4)
    del frame
    _install_hook()
    _wire.send(sock, _wire.HELLO, 0, _wire.FIGURES.pack(0, 0, peak_rss(), rss_now(), -1))
    while True:
        frame = _wire.recv(sock)
        if frame is None or frame[0] == _wire.STOP:
            break
        kind, task_id, body = frame
        del frame
        if kind == _wire.TASK:
            _run(sock, task_id, body)
        del body
    sock.close()  # then a normal exit: atexit handlers of the user's modules run here


def unpack_error(body: bytes) -> Tuple[str, bytes]:
    """(traceback text, exception pickle) from an ERROR body after its FIGURES."""
    (n,) = _TB_LEN.unpack_from(body, 0)
    start = _TB_LEN.size
    return body[start:start + n].decode("utf-8", "replace"), body[start + n:]


def worker_command(executable: str, package_parent: str, fd: int, parent_pid: int) -> list:
    """The argv that starts a worker (``package_parent`` makes gil_adapt importable)."""
    code = ("import sys; sys.path.append(%r); "
            "from gil_adapt.backends._worker import main; main()") % package_parent
    return [executable, "-c", code, str(fd), str(parent_pid)]


if __name__ == "__main__":  # pragma: no cover - started through worker_command()
    main()
