"""Sub-interpreters: executors belong to the main interpreter.

A legacy sub-interpreter (``Py_NewInterpreter``, what ``_testcapi.run_in_subinterp``
makes, sharing this extension's C state) may import gil_adapt; destroying it leaves the
main interpreter's executors running; an executor made there raises a clear error (its
workers could only take the main interpreter's thread states). Each interpreter gets its
own module object and state (multi-phase initialisation). Interpreters with a GIL of their
own refuse the module at import (ImportError).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_each_interpreter_has_its_own_module_state(tmp_path):
    """Multi-phase initialisation: a legacy sub-interpreter gets its own _core module
    object and types (not the main interpreter's), reading the same process-wide ledger."""
    out = os.path.join(str(tmp_path), "state.json")
    import gil_adapt._core as core
    main_ids = [id(core), id(core.Pool), id(core.ThreadSample)]
    rc = run_in_subinterp(f"""
        import json
        import gil_adapt._core as core
        now, rows, exited = core.read()
        with open({out!r}, "w") as f:
            json.dump({{"ids": [id(core), id(core.Pool), id(core.ThreadSample)],
                       "fields": list(core.SAMPLE_FIELDS), "rows": len(rows),
                       "tid": rows[0].tid if rows else None}}, f)
    """)
    assert rc == 0
    with open(out) as f:
        sub = json.load(f)
    assert all(a != b for a, b in zip(sub["ids"], main_ids)), "the sub-interpreter shares objects"
    assert sub["fields"] == list(core.SAMPLE_FIELDS)
    assert sub["rows"] >= 1 and isinstance(sub["tid"], int)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="interpreters with their own GIL: 3.12+")
def test_an_isolated_subinterpreter_gets_a_clear_import_error():
    """An interpreter with a GIL of its own is refused at import (ImportError), never half
    set up: the hook and the ledger are process-wide and measure the main GIL."""
    script = textwrap.dedent("""
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters
        iid = interpreters.create()
        try:
            result = interpreters.run_string(iid, "import gil_adapt._core")
            print("RESULT", None if result is None else result.formatted)
        except Exception as e:
            print("RESULT", type(e).__name__, e)
        finally:
            interpreters.destroy(iid)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    assert "ImportError" in line and "does not support loading in subinterpreters" in line, line
