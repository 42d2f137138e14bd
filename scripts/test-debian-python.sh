#!/usr/bin/env bash
# Tests gil-adapt on CPython releases newer than the ones pyenv has here: Debian unstable's
# python3.14 and python3.15, Debian's own builds (the interpreter linked statically, as
# Debian's python3 always is), in a Debian unstable root made with debootstrap.
#
#   scripts/test-debian-python.sh            # 3.14 and 3.15
#   scripts/test-debian-python.sh 3.15       # one of them
#   scripts/test-debian-python.sh --prepare  # only make the root (no tests)
#
# The root is made once under ${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}/debian-sid-amd64
# (debootstrap --variant=minbase from the Debian mirror the machine's apt uses, checked
# against the machine's Debian archive keyring; then gcc and python3.X, -dev and -venv
# with apt inside it) and reused afterwards; a finished root is moved into place whole.
# Each run copies the working tree into the root and, for each version, builds gil-adapt
# with -Werror into a fresh venv there and runs the ledger, executor, fork,
# sub-interpreter and hook tests, after checking that the GIL calibrates (`gil_wait`
# "exact": its layout is the one gil_layout.h describes). The root runs in a private
# mount namespace (its /proc, /sys and /dev vanish with the run); the machine's own apt
# sources are left alone.
# Needs root (or sudo) for debootstrap and chroot, and the network to Debian's mirror and
# to PyPI (pytest). Progress goes to stderr, the tests' output to stdout. Exit status: 0
# all passed, 1 a test failed, 3 the root could not be made (no network, no root).
set -euo pipefail
. "$(dirname "$0")/debian-root.sh"
cd "$(dirname "$0")/.."

prepare_only=0
if [ "${1:-}" = --prepare ]; then
  prepare_only=1
  shift
fi
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.14 3.15)
for v in "${versions[@]}"; do
  case $v in 3.1[4-9]) ;; *) echo "usage: $0 [--prepare] [3.14] [3.15] (Debian unstable's python3.X)" >&2; exit 2 ;; esac
done

cache=${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}
root=$cache/debian-sid-amd64
msg() { echo "test-debian-python: $*" >&2; }

root_ready() {
  local v
  for v in "${versions[@]}"; do
    [ -x "$root/usr/bin/python$v" ] && [ -f "$root/usr/include/python$v/Python.h" ] \
      && [ -f "$root/usr/lib/python$v/ensurepip/__init__.py" ] || return 1
  done
  [ -x "$root/usr/bin/gcc" ]
}

pkgs=(gcc libc6-dev)
for v in "${versions[@]}"; do pkgs+=("python$v" "python$v-dev" "python$v-venv"); done
ensure_root "$root" sid amd64 root_ready "${pkgs[@]}"
if [ $prepare_only = 1 ]; then
  msg "root ready: $root"
  exit 0
fi

copy_tree "$root"
tests="tests/test_ledger.py tests/test_executor.py tests/test_executor_semantics.py"
tests="$tests tests/test_executor_modes.py tests/test_fork.py tests/test_subinterpreters.py"
tests="$tests tests/test_hook_peers.py"
status=0
for v in "${versions[@]}"; do
  echo "== build + ledger and executor tests on Debian's $(in_root "$root" "python$v" --version) (Debian unstable root)"
  if ! in_root "$root" sh -ec "
      cd /src
      rm -rf /venv-$v
      python$v -m venv /venv-$v
      /venv-$v/bin/python -m pip install -q --disable-pip-version-check pytest pytest-timeout setuptools wheel
      GIL_ADAPT_WERROR=1 /venv-$v/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
      /venv-$v/bin/python -c 'import gil_adapt, json; c = gil_adapt.capabilities(); print(json.dumps(c)); assert c[\"gil_wait\"] == \"exact\", \"the GIL layout did not calibrate\"'
      /venv-$v/bin/python -m pytest -q -p no:cacheprovider $tests"; then
    status=1
  fi
done
exit $status
