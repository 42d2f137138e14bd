"""Helpers of the backend tests (no pytest here: kept out of worker processes)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, List

#: Guards against hangs; never bounds a speed.
HANG = 60.0


def poll(pred: Callable[[], bool], timeout: float = HANG) -> bool:
    """True as soon as ``pred()`` is, False if it is not within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


@contextlib.contextmanager
def made(cls: Any) -> Iterator[Callable[..., Any]]:
    """A factory of ``cls`` backends, every one shut down (queued tasks cancelled) after."""
    backends: List[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        b = cls(*args, **kwargs)
        backends.append(b)
        return b

    try:
        yield make
    finally:
        for b in backends:
            b.shutdown(wait=True, cancel_futures=True)
