#!/usr/bin/env bash
# The whole test suite (README's test command runs this through `make test`):
#  1. the C unit tests, -Wall -Wextra -Werror, plain + ASan/UBSan + TSan;
#  2. the lint checks (ruff; clang-format --dry-run on the C, style in .clang-format) and the
#     full pytest suite on the default python3 (with promtool from scripts/get-promtool.sh,
#     which lints the metrics exporter's output);
#  3. the build and the ledger, executor, fork, sub-interpreter and hook tests on every
#     other CPython >= 3.9 that pyenv has, on a free-threaded CPython 3.13t (built once,
#     see scripts/build-python.sh), on Debian unstable's CPython 3.14 and 3.15 (in a root
#     made once, see scripts/test-debian-python.sh), and the ledger tests on Debian's
#     statically linked python3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== C unit tests"
make -C tests/c

venv_for() {  # venv_for PYTHON DIR: a venv with gil-adapt (built with -Werror) + test deps
  local py=$1 dir=$2
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
  GIL_ADAPT_WERROR=1 "$dir/bin/python" -m pip install -q --force-reinstall --no-deps . >/dev/null
  "$dir/bin/python" -m pip install -q ".[test]" >/dev/null
}

default_py=${PYTHON:-python3}
echo "== full suite on $($default_py --version)"
venv_for "$default_py" .venv-test
echo "== lint (ruff, configured in pyproject.toml)"
.venv-test/bin/ruff check src tests benchmarks
echo "== format (clang-format, .clang-format)"
git ls-files -z 'csrc/*.[ch]' 'tests/c/*.[ch]' | xargs -0 .venv-test/bin/clang-format --dry-run --Werror
# promtool lints the exporter's output (tests/test_metrics_series.py); only the binary
# is fetched, into the cache directory (see the script).
if promtool=$(scripts/get-promtool.sh | tail -n 1) && [ -x "$promtool" ]; then
  export PATH="$(dirname "$promtool"):$PATH"
else
  echo "WARNING: promtool unavailable: the promtool check of the metrics is SKIPPED"
fi
.venv-test/bin/python -m pytest -q tests

default_ver=$($default_py -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if command -v pyenv >/dev/null 2>&1; then
  for ver in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|[1-9][0-9])(\.|$)' | sort -V); do
    py="$(pyenv root)/versions/$ver/bin/python"
    [ -x "$py" ] || continue
    short=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$short" = "$default_ver" ] && continue
    echo "== build + ledger and executor tests on Python $ver"
    venv_for "$py" ".venv-$ver"
    ".venv-$ver/bin/python" -m pytest -q tests/test_ledger.py tests/test_executor.py tests/test_executor_semantics.py tests/test_executor_modes.py \
      tests/test_fork.py tests/test_subinterpreters.py tests/test_hook_peers.py
  done
fi
# A free-threaded CPython (no GIL): scripts/build-python.sh builds 3.13t once from Debian's
# source package into ~/.cache/gil-adapt (minutes on 2 cores) and reuses it afterwards.
# Where it cannot be built (no network to Debian's mirror, no root for its build
# dependencies) the leg is skipped with a warning, unless GIL_ADAPT_REQUIRE_FT=1.
echo "== free-threaded CPython 3.13t: build (once) + ledger, executor and profiler tests"
if ft_py=$(scripts/build-python.sh 3.13t | tail -n 1) && [ -x "$ft_py" ]; then
  [ -x .venv-3.13t/bin/python ] || "$ft_py" -m venv .venv-3.13t
  .venv-3.13t/bin/python -m pip install -q --upgrade pip >/dev/null
  GIL_ADAPT_WERROR=1 .venv-3.13t/bin/python -m pip install -q --force-reinstall --no-deps . >/dev/null
  .venv-3.13t/bin/python -m pip install -q "pytest>=7" "pytest-timeout>=2" >/dev/null
  # -W error::RuntimeWarning: importing gil_adapt must never turn the GIL back on
  .venv-3.13t/bin/python -W error::RuntimeWarning -c 'import sys, gil_adapt; assert not sys._is_gil_enabled(), "gil_adapt enabled the GIL"'
  # with CPython's own ThreadPoolExecutor tests (tests/test_cpython_suite.py): the build
  # ships them, and free threading is where an executor's races would show
  .venv-3.13t/bin/python -m pytest -q -p no:cacheprovider tests/test_ledger.py tests/test_executor.py \
    tests/test_executor_semantics.py tests/test_executor_modes.py tests/test_profiler.py \
    tests/test_fork.py tests/test_subinterpreters.py tests/test_hook_peers.py tests/test_cpython_suite.py
elif [ "${GIL_ADAPT_REQUIRE_FT:-0}" = 1 ]; then
  echo "free-threaded CPython could not be built (GIL_ADAPT_REQUIRE_FT=1)" >&2
  exit 1
else
  echo "WARNING: free-threaded leg SKIPPED: scripts/build-python.sh 3.13t failed (see its log in ~/.cache/gil-adapt)"
fi
# CPython 3.14 and 3.15, which pyenv here lacks: Debian unstable's builds, in a root made
# once with debootstrap under ~/.cache/gil-adapt (see the script). Where the root cannot
# be made (no network to Debian's mirror, no root) the leg is skipped with a warning.
echo "== CPython 3.14 and 3.15 (Debian unstable's builds): build + ledger and executor tests"
rc=0
scripts/test-debian-python.sh 3.14 3.15 || rc=$?
if [ $rc = 3 ]; then
  echo "WARNING: CPython 3.14/3.15 leg SKIPPED: scripts/test-debian-python.sh could not make its root (see its log in ~/.cache/gil-adapt)"
elif [ $rc != 0 ]; then
  exit $rc
fi
# Debian's python3 links the interpreter statically: the hook patches the executable.
if [ -x /usr/bin/python3 ] && ! readelf -d "$(readlink -f /usr/bin/python3)" 2>/dev/null | grep -q 'NEEDED.*libpython'; then
  echo "== build + ledger tests on the statically linked $(/usr/bin/python3 --version)"
  venv_for /usr/bin/python3 .venv-system
  .venv-system/bin/python -m pytest -q tests/test_ledger.py
fi
echo "== all tests passed"
