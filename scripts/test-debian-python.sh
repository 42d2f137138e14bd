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
# sub-interpreter and hook tests. The root runs in a private mount namespace (its /proc,
# /sys and /dev vanish with the run); the machine's own apt sources are left alone.
# Needs root (or sudo) for debootstrap and chroot, and the network to Debian's mirror and
# to PyPI (pytest). Progress goes to stderr, the tests' output to stdout. Exit status: 0
# all passed, 1 a test failed, 3 the root could not be made (no network, no root).
set -euo pipefail
. "$(dirname "$0")/debian-mirror.sh"
cd "$(dirname "$0")/.."

prepare_only=0
if [ "${1:-}" = --prepare ]; then
  prepare_only=1
  shift
fi
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.14 3.15)
for v in "${versions[@]}"; do
  case $v in 3.1[4-9]) ;; *) echo "usage: $0 [3.14] [3.15] (Debian unstable's python3.X)" >&2; exit 2 ;; esac
done

cache=${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}
root=$cache/debian-sid-amd64
log=$cache/debian-sid-amd64.log
msg() { echo "test-debian-python: $*" >&2; }
die() { msg "error: $*"; exit 3; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "needs root or sudo (debootstrap, chroot)"
  SUDO=sudo
fi

run() {  # run CMD...: output to the log; on failure, show the log's tail and stop
  echo "+ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    msg "error: failed: $*"
    msg "last lines of $log:"
    tail -n 40 "$log" >&2
    exit 3
  fi
}

# in_root DIR CMD...: CMD inside the root DIR, with /proc, /sys and /dev, in a private
# mount namespace (the mounts end with the command), a clean environment.
in_root() {
  $SUDO unshare --mount --fork -- sh -ec '
    r=$1; shift
    mount --make-rprivate /
    mount -t proc proc "$r/proc"
    mount --rbind /sys "$r/sys"
    mount --rbind /dev "$r/dev"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' sh "$@"
}

root_ready() {
  local v
  for v in "${versions[@]}"; do
    [ -x "$root/usr/bin/python$v" ] && [ -f "$root/usr/include/python$v/Python.h" ] \
      && [ -f "$root/usr/lib/python$v/ensurepip/__init__.py" ] || return 1
  done
  [ -x "$root/usr/bin/gcc" ]
}

mkdir -p "$cache"
exec 9>"$cache/debian-sid-amd64.lock"
flock 9
if ! root_ready; then
  : >"$log"
  if ! command -v debootstrap >/dev/null; then
    msg "installing debootstrap"
    run $SUDO apt-get update -q
    run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  fi
  mirror=$(debian_mirror)
  keyring=$DEBIAN_KEYRING
  [ -r "$keyring" ] || die "$keyring is missing (install debian-archive-keyring)"
  tmp=$root.tmp
  $SUDO rm -rf "$tmp"
  if [ -x "$root/usr/bin/apt-get" ]; then
    $SUDO mv "$root" "$tmp"  # a root without every version asked for: add to it
  else
    msg "debootstrap: Debian unstable (amd64, minbase) into $root (minutes; log: $log)"
    run $SUDO debootstrap --variant=minbase --keyring="$keyring" --include=ca-certificates \
      sid "$tmp" "$mirror"
  fi
  pkgs=(gcc libc6-dev)
  for v in "${versions[@]}"; do pkgs+=("python$v" "python$v-dev" "python$v-venv"); done
  msg "apt inside the root: ${pkgs[*]}"
  # A mirror that is a snapshot serves a Release file past its Valid-Until date: its
  # signature is still checked, its age is not.
  apt_opts=(-o Acquire::Check-Valid-Until=false)
  run in_root "$tmp" apt-get "${apt_opts[@]}" update -q
  run in_root "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q \
    --no-install-recommends "${pkgs[@]}"
  run in_root "$tmp" apt-get clean
  $SUDO rm -rf "$root"
  $SUDO mv "$tmp" "$root"
  root_ready || die "the root lacks a python or gcc after apt (see $log)"
fi
exec 9>&-
if [ $prepare_only = 1 ]; then
  msg "root ready: $root"
  exit 0
fi

# The working tree (tracked and untracked-but-not-ignored files) into the root.
$SUDO rm -rf "$root/src"
$SUDO mkdir -p "$root/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | $SUDO tar -xf - -C "$root/src"

# pip inside the root trusts what the machine's pip trusts (a site's TLS proxy CA).
pip_env=()
host_cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$host_cert" ] && [ -r "$host_cert" ]; then
  $SUDO cp "$host_cert" "$root/etc/host-pip-ca.crt"
  pip_env=(PIP_CERT=/etc/host-pip-ca.crt)
fi

tests="tests/test_ledger.py tests/test_executor.py tests/test_executor_semantics.py
  tests/test_executor_modes.py tests/test_fork.py tests/test_subinterpreters.py tests/test_hook_peers.py"
status=0
for v in "${versions[@]}"; do
  echo "== build + ledger and executor tests on Debian's $(in_root "$root" "python$v" --version) (Debian unstable root)"
  if ! in_root "$root" env "${pip_env[@]}" sh -ec "
      cd /src
      rm -rf /venv-$v
      python$v -m venv /venv-$v
      /venv-$v/bin/python -m pip install -q --disable-pip-version-check pytest pytest-timeout setuptools wheel
      GIL_ADAPT_WERROR=1 /venv-$v/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
      /venv-$v/bin/python -c 'import gil_adapt, json; print(json.dumps(gil_adapt.capabilities()))'
      /venv-$v/bin/python -m pytest -q -p no:cacheprovider $tests"; then
    status=1
  fi
done
exit $status
