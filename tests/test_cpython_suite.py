"""CPython's own tests of ThreadPoolExecutor, run against AdaptiveExecutor.

The standard library's tests of ``concurrent.futures`` (``test.test_concurrent_futures``,
shipped with CPython; some builds leave the ``test`` package out, and then these skip)
check an executor through the test class's ``executor_type``. Every thread-pool test class
found there runs again here with ``executor_type = AdaptiveExecutor``. The tests left out
(``SKIPS``) read ThreadPoolExecutor's internals or construct ThreadPoolExecutor by name,
each with its reason.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import unittest
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

from gil_adapt import AdaptiveExecutor


def _suite_modules() -> Tuple[List[ModuleType], Optional[str]]:
    try:
        pkg = importlib.import_module("test.test_concurrent_futures")
    except (ImportError, unittest.SkipTest) as e:
        return [], f"CPython's test.test_concurrent_futures is not available: {e}"
    if not hasattr(pkg, "__path__"):  # 3.9-3.11: one module
        return [pkg], None
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("test_")]
    return [importlib.import_module(f"{pkg.__name__}.{n}") for n in names], None


_INTERNALS = "reads ThreadPoolExecutor's internals (executor._threads)"
_BY_NAME = "constructs ThreadPoolExecutor itself, by name: says nothing of the executor tested"
SKIPS: Dict[str, str] = {
    "test_default_workers": "ThreadPoolExecutor's default max_workers (AdaptiveExecutor has its "
                            "own: README, API)",
    "test_saturation": _INTERNALS,
    "test_idle_thread_reuse": _INTERNALS,
    "test_threads_terminate": _INTERNALS,
    "test_hang_global_shutdown_lock": _BY_NAME,
    "test_context_manager_shutdown": _BY_NAME,
    "test_del_shutdown": _BY_NAME,
    "test_shutdown_no_wait": _BY_NAME,
    "test_thread_names_assigned": _BY_NAME,
    "test_thread_names_default": _BY_NAME,
    "test_cancel_futures_wait_false": _BY_NAME,
}

_IMPORT = "from concurrent.futures import AdaptiveExecutor"


class _ChildScriptsImportIt(unittest.TestCase):
    """Scripts the suite runs in a child interpreter import the executor by its name from
    concurrent.futures: for AdaptiveExecutor they import it from gil_adapt instead."""

    def setUp(self) -> None:
        mod = sys.modules[type(self).__mro__[2].__module__]
        run = getattr(mod, "assert_python_ok", None)
        if run is not None:
            def patched(*args: Any, **kw: Any) -> Any:
                return run(*(a.replace(_IMPORT, "from gil_adapt import AdaptiveExecutor")
                             if isinstance(a, str) else a for a in args), **kw)

            mod.assert_python_ok = patched
            self.addCleanup(setattr, mod, "assert_python_ok", run)
        super().setUp()

_MODULES, _MISSING = _suite_modules()


def _adapt(cls: type) -> type:
    attrs = {"executor_type": AdaptiveExecutor, "__module__": __name__,
             "__qualname__": "Adaptive" + cls.__name__}
    for name, reason in SKIPS.items():
        if hasattr(cls, name):
            attrs[name] = unittest.skip(reason)(lambda self: None)
    return type("Adaptive" + cls.__name__, (_ChildScriptsImportIt, cls), attrs)


def _thread_pool_classes() -> List[type]:
    found: List[type] = []
    for mod in _MODULES:
        util = getattr(mod, "ThreadPoolMixin", None) or getattr(
            importlib.import_module("test.test_concurrent_futures.util"), "ThreadPoolMixin")
        for obj in list(vars(mod).values()):
            if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                    and issubclass(obj, util) and obj.__module__ == mod.__name__
                    and obj not in found):
                found.append(obj)
    return found


if _MISSING:
    class TestCPythonSuiteUnavailable(unittest.TestCase):
        @unittest.skip(_MISSING)
        def test_suite_available(self) -> None:
            """Skipped: the interpreter ships without CPython's test package."""
else:
    _FOUND = _thread_pool_classes()
    for _cls in _FOUND:
        _new = _adapt(_cls)
        globals()[_new.__name__] = _new

    class TestCPythonSuiteFound(unittest.TestCase):
        def test_thread_pool_classes_found(self) -> None:
            names = {c.__name__ for c in _FOUND}
            # the classes every CPython from 3.9 on has: a discovery that finds fewer
            # would pass by testing nothing
            for expected in ("ThreadPoolExecutorTest", "ThreadPoolShutdownTest"):
                self.assertIn(expected, names)
            self.assertGreaterEqual(len(_FOUND), 5, sorted(names))
