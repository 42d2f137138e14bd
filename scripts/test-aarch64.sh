#!/usr/bin/env bash
# Tests gil-adapt's C core and ledger on aarch64 (64-bit ARM, the Cortex-A boards edge
# Python runs on), emulated with qemu-user on an x86-64 machine: correctness only, since
# emulated timing means nothing.
#
#   scripts/test-aarch64.sh            # build and test
#   scripts/test-aarch64.sh --prepare  # only make the root (no tests)
#
# The first run makes a Debian 12 ("bookworm") arm64 root under
# ${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}/debian-bookworm-arm64 (debootstrap
# --variant=minbase from the Debian mirror the machine's apt uses, checked against the
# machine's Debian archive keyring; then gcc, make, python3 with -dev and -venv with apt
# inside it) and later runs reuse it. Debian's qemu-user-static is installed on the
# machine where it is missing, and its aarch64 interpreter registered with binfmt_misc
# with the F flag (opened once, so it also serves inside the root).
# Each run copies the working tree into the root, then, all of it aarch64 code under
# qemu-aarch64:
#   1. the C unit tests of the ledger, the GOT hook and the pool (plain, -Werror) — the
#      controller's test is left out: its thousand simulated workloads are arithmetic
#      only, the same on every architecture, and take about an hour emulated;
#   2. the extension built with -Werror into a venv of Debian's python3 (3.11);
#   3. a check that the GIL calibrates (`gil_wait` "exact": the hook patched the
#      interpreter's pthread slots and the GIL's layout is the one gil_layout.h says);
#   4. tests/test_ledger.py (but its 50,000-thread churn, too slow emulated).
# Costs about 4 minutes of a 2-CPU machine (the root: about 5 more, once).
# Needs root (or sudo) for debootstrap, binfmt_misc and chroot, and the network to
# Debian's mirror and to PyPI (pytest). Exit status: 0 passed, 1 a test failed, 3 the
# root or the emulator could not be set up.
set -euo pipefail
. "$(dirname "$0")/debian-root.sh"
cd "$(dirname "$0")/.."

prepare_only=0
case ${1:-} in
  --prepare) prepare_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--prepare]" >&2; exit 2 ;;
esac

cache=${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}
root=$cache/debian-bookworm-arm64
msg() { echo "test-aarch64: $*" >&2; }

ensure_qemu() {
  local binfmt=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ ! -e "$conf" ]; then
    msg "installing Debian's qemu-user-static"
    $ROOT_SUDO apt-get update -q >&2 || { msg "apt-get update failed"; exit 3; }
    $ROOT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends qemu-user-static >&2 || { msg "cannot install qemu-user-static"; exit 3; }
  fi
  [ -e "$binfmt/register" ] || $ROOT_SUDO mount -t binfmt_misc binfmt_misc "$binfmt" \
    || { msg "binfmt_misc is not available"; exit 3; }
  if [ ! -e "$binfmt/qemu-aarch64" ]; then
    # Debian's line with the F flag added: the kernel opens the interpreter now, so it
    # runs inside the root too, where its path does not exist.
    local line
    line=$(grep -v '^#' "$conf" | head -n 1)
    case ${line##*:} in *F*) ;; *) line="${line}F" ;; esac
    printf '%s' "$line" | $ROOT_SUDO tee "$binfmt/register" >/dev/null \
      || { msg "cannot register qemu-aarch64 with binfmt_misc"; exit 3; }
  fi
  grep -q '^flags: .*F' "$binfmt/qemu-aarch64" \
    || { msg "qemu-aarch64 is registered without the F flag: it cannot run inside a root"; exit 3; }
}

root_ready() {
  [ -x "$root/usr/bin/gcc" ] && [ -x "$root/usr/bin/make" ] && [ -x "$root/usr/bin/python3" ] \
    && [ -f "$root/usr/lib/python3/dist-packages/pip/__init__.py" ] \
    && ls "$root"/usr/include/python3*/Python.h >/dev/null 2>&1
}

ensure_qemu
ensure_root "$root" bookworm arm64 root_ready \
  gcc libc6-dev make python3 python3-dev python3-venv python3-pip
if [ $prepare_only = 1 ]; then
  msg "root ready: $root"
  exit 0
fi

copy_tree "$root"
echo "== aarch64 under qemu-user: $(in_root "$root" uname -m), $(in_root "$root" python3 --version), $(in_root "$root" gcc --version | head -n 1)"
in_root "$root" sh -ec '
  cd /src
  echo "== C unit tests (plain, -Werror): ledger, hook, pool"
  make -s -C tests/c MODES=plain bin/plain/test_ledger bin/plain/test_hook bin/plain/test_pool
  file_arch=$(od -An -tx1 -j18 -N2 tests/c/bin/plain/test_ledger | tr -d " ")
  [ "$file_arch" = b700 ] || { echo "not an aarch64 binary (e_machine $file_arch)"; exit 1; }
  for t in test_ledger test_hook test_pool; do
    echo "== plain/$t"
    tests/c/bin/plain/$t
  done
  echo "== extension (-Werror) and ledger tests"
  rm -rf /venv
  python3 -m venv /venv
  /venv/bin/python -m pip install -q --disable-pip-version-check -U pytest pytest-timeout setuptools wheel
  GIL_ADAPT_WERROR=1 /venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
  /venv/bin/python -c "import gil_adapt, json, platform; c = gil_adapt.capabilities(); print(platform.machine(), json.dumps(c)); assert platform.machine() == \"aarch64\"; assert c[\"gil_wait\"] == \"exact\", \"the GIL layout did not calibrate\""
  # 50,000 thread starts take longer than the test timeout under emulation; the
  # recycling they check is the same C code the C ledger tests run here.
  /venv/bin/python -m pytest -q -p no:cacheprovider tests/test_ledger.py \
    --deselect tests/test_ledger.py::test_fifty_thousand_thread_starts_are_all_measured_and_reads_stay_small
' && exit 0
exit 1
