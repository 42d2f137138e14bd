"""Sub-interpreters: executors belong to the main interpreter.

A legacy sub-interpreter (``Py_NewInterpreter``, what ``_testcapi.run_in_subinterp``
makes, sharing this extension's C state) may import gil_adapt; destroying it leaves the
main interpreter's executors running; an executor made there raises a clear error (its
workers could only take the main interpreter's thread states). Isolated sub-interpreters
refuse the module at import (CPython's own ImportError for single-phase modules).
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from gil_adapt import AdaptiveExecutor

_testcapi = pytest.importorskip("_testcapi", reason="needs CPython's _testcapi")

HANG = 30.0


def run_in_subinterp(code: str) -> int:
    return _testcapi.run_in_subinterp(textwrap.dedent(code))


def test_destroying_a_subinterpreter_that_imported_gil_adapt_spares_main_executors(tmp_path):
    out = os.path.join(str(tmp_path), "sub.json")
    with AdaptiveExecutor(4) as ex:
        assert ex.submit(abs, -1).result(timeout=HANG) == 1
        rc = run_in_subinterp(f"""
            import json
            import gil_adapt
            try:
                gil_adapt.AdaptiveExecutor(2)
                what = "made"
            except RuntimeError as e:
                what = str(e)
            with open({out!r}, "w") as f:
                json.dump(what, f)
        """)
        assert rc == 0
        with open(out) as f:
            what = json.load(f)
        assert "main interpreter only" in what
        # the sub-interpreter is gone (and ran its exit hooks): this one still works
        assert ex.submit(abs, -2).result(timeout=HANG) == 2
    with AdaptiveExecutor(2) as again:  # and new executors can be made
        assert again.submit(abs, -3).result(timeout=HANG) == 3
