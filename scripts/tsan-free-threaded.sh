#!/usr/bin/env bash
# gil_adapt under ThreadSanitizer on a free-threaded CPython 3.13 (no GIL): builds that
# interpreter once with --with-thread-sanitizer (scripts/build-python.sh 3.13t-tsan; its
# CFLAGS carry -fsanitize=thread, so the extension built for it is instrumented too),
# installs gil_adapt into .venv-3.13t-tsan and runs tests/stress_free_threaded.py with
# CPython's own suppressions for its known free-threading races. Exit status 0: every
# check of the stress held and TSan reported nothing.
#
#   scripts/tsan-free-threaded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/build-python.sh 3.13t-tsan | tail -n 1)
prefix=$(dirname "$(dirname "$py")")
venv=.venv-3.13t-tsan
# Setting up (venv, pip, the build) runs CPython's own code under TSan, which reports
# races in CPython itself (finalisation, thread handles): silenced for these steps only.
export TSAN_OPTIONS="report_bugs=0 exitcode=0"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
GIL_ADAPT_WERROR=1 "$venv/bin/python" -m pip install -q --force-reinstall --no-deps . >/dev/null
supp=$prefix/share/tsan/suppressions_free_threading.txt
opts="halt_on_error=0 second_deadlock_stack=1"
[ -f "$supp" ] && opts="$opts suppressions=$supp"
echo "== gil_adapt under TSan, free-threaded $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
TSAN_OPTIONS="$opts" "$venv/bin/python" tests/stress_free_threaded.py
