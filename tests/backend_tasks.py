"""Task functions the backend tests send to worker processes (importable there: a test
module would drag pytest into every worker)."""
from __future__ import annotations

import os
import signal
import time
from typing import Any, List, Tuple


def echo(x: Any) -> Any:
    return x


def ident(i: int) -> Tuple[int, int]:
    """(i, worker pid): counts every task and where it ran."""
    return i, os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def die(code: int) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def kill_first_run(marker: str, value: int) -> int:
    """SIGKILLs its worker the first time (``marker`` file absent), returns value after."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return value
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return -1


def wait_for_file(path: str, timeout: float = 30.0) -> int:
    """Blocks until ``path`` exists (the test's gate), returns the worker pid."""
    end = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.005)
    return os.getpid()


def touch_and_wait(started: str, gate: str, timeout: float = 30.0) -> int:
    """Creates ``started`` (the test knows a worker runs it), then waits for ``gate``."""
    with open(started, "w"):
        pass
    return wait_for_file(gate, timeout)


def unpicklable_result() -> Any:
    return lambda: None


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses pickling")


def raise_unpicklable() -> None:
    raise Unpicklable("boom")


class BadInit(Exception):
    """Pickles, but cannot be rebuilt (its __init__ needs two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_bad_init() -> None:
    raise BadInit(1, 2)


def allocate(mib: int, hold_s: float = 0.0) -> int:
    """Holds ``mib`` MiB resident for ``hold_s`` seconds, returns the pid."""
    block = bytearray(b"\x01") * (mib << 20)
    if hold_s:
        time.sleep(hold_s)
    del block
    return os.getpid()


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def sleep_return(s: float, value: Any) -> Any:
    time.sleep(s)
    return value


def pids_of_children() -> List[int]:
    return [os.getpid(), os.getppid()]


_initialised: List[str] = []


def init(tag: str) -> None:
    _initialised.append(tag)


def init_fail() -> None:
    raise RuntimeError("initializer fails on purpose")


def initialised() -> List[str]:
    return list(_initialised)


def record(directory: str, i: int) -> int:
    """Appends ``i`` to this worker's log in ``directory``: counts each run exactly."""
    with open(os.path.join(directory, f"{os.getpid()}.log"), "a") as f:
        f.write(f"{i}\n")
    return i


def spans(mib: int, hold_s: float) -> Tuple[float, float]:
    """Allocates ``mib`` MiB for ``hold_s``: (start, end) on the system-wide monotonic clock."""
    start = time.monotonic()
    block = bytearray(b"\x01") * (mib << 20)
    time.sleep(hold_s)
    del block
    return start, time.monotonic()


def spin_record(directory: str, i: int, n: int) -> int:
    """``spin(n)`` then ``record(directory, i)``: GIL-bound Python CPU, each run counted."""
    spin(n)
    return record(directory, i)


def runs_in(directory: str) -> List[int]:
    """Every index :func:`record` wrote in ``directory``, over all processes."""
    out: List[int] = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            out.extend(int(line) for line in f if line.strip())
    return out


def phase_task(kind: str, n: int) -> int:
    """One task of a phase of work through one function (as dask's batch_execute_tasks
    funnels every kind): ``"cpu"`` pure-Python CPU (n loop steps), ``"numpy"`` a NumPy reduction
    (CPU mostly outside the GIL), ``"sleep"`` 50 ms of waiting."""
    if kind == "cpu":
        return spin(n)
    if kind == "numpy":
        import numpy as np

        a = np.arange(400_000, dtype=np.float64)
        return int(np.sqrt(a).sum() > 0)
    if kind == "sleep0":
        return 0
    time.sleep(0.05)
    return 0
