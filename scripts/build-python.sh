#!/usr/bin/env bash
# Provides a free-threaded ("no-GIL", --disable-gil) CPython 3.13 for the test suite,
# which needs one to test gil-adapt with the GIL really off and Debian has none to
# install on bookworm.
#
#   scripts/build-python.sh 3.13t        # the interpreter the test suite uses
#   scripts/build-python.sh 3.13t-tsan   # the same built with --with-thread-sanitizer
#                                        # (scripts/tsan-free-threaded.sh uses it)
#
# Fetches the source of Debian trixie's python3.13 with apt, through a private apt
# configuration under the cache directory (the machine's own apt sources are left
# alone), checks it (apt checks the Sources index against the signed Release file and
# the downloaded files against the index; the upstream tarball's own signature is
# checked as well with gpgv), and builds the unpacked upstream tree upstream-style
# (Debian's patches and debian/rules are not used; no PGO/LTO, to keep it to minutes):
#   ./configure --disable-gil --enable-shared --prefix=$PREFIX LDFLAGS=-Wl,-rpath,$PREFIX/lib
#   make -j$(nproc) && make install
# into ${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}/python-3.13t, outside the repository.
# Installs the missing build dependencies with the machine's apt first (root or sudo).
# Once that python works, later runs reuse it and do nothing else. Runs are serialised
# with flock, and a finished build is moved into place whole, so concurrent runs are safe.
# Progress goes to stderr, the build output to a log in the cache directory (its tail is
# printed on failure), and the python executable's path is the last line on stdout.
set -euo pipefail
. "$(dirname "$0")/debian-root.sh"

usage() { echo "usage: $0 3.13t|3.13t-tsan    (free-threaded CPython 3.13, optionally under TSan)" >&2; exit 2; }
[ $# -eq 1 ] || usage
extra_configure=()
case $1 in
  3.13t) ;;
  3.13t-tsan) extra_configure=(--with-thread-sanitizer) ;;
  *) usage ;;
esac

cache=${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}
name=python-$1
prefix=$cache/$name
py=$prefix/bin/python3.13t
log=$cache/$name-build.log
srcpkg=python3.13

msg() { echo "build-python: $*" >&2; }
die() { msg "error: $*"; exit 1; }

# The modules the test suite (and pip/venv) need; the check that a build is usable.
works() {
  [ -x "$py" ] && "$py" -I -c '
import sys, sysconfig
assert not sys._is_gil_enabled(), "GIL is enabled"
assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1
import ssl, sqlite3, ctypes, zlib, bz2, lzma, ensurepip, venv
' >/dev/null 2>&1
}

if works; then
  echo "$py"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/$name.lock"
if ! flock -n 9; then
  msg "another run is building $name; waiting for it"
  flock 9
fi
if works; then  # built by the run we waited for
  echo "$py"
  exit 0
fi

: >"$log"
run() {  # run CMD...: its output goes to the log; on failure, show the log's tail and stop
  echo "+ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    msg "error: failed: $*"
    msg "last lines of $log:"
    tail -n 40 "$log" >&2
    exit 1
  fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
fi

# --- build dependencies (machine's apt; only what is missing) ---
deps=(gcc make pkg-config libc6-dev xz-utils gpgv util-linux
      libssl-dev libffi-dev zlib1g-dev libsqlite3-dev libbz2-dev liblzma-dev
      libreadline-dev libncurses-dev uuid-dev libgdbm-dev libexpat1-dev)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  msg "installing build dependencies: ${missing[*]}"
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    die "need root or sudo to install: ${missing[*]}"
  fi
  run $SUDO apt-get update -q
  run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- source: Debian trixie's python3.13, via a private apt configuration ---
# Use the Debian mirror the machine's apt already uses (default: deb.debian.org).
mirror=$(debian_mirror)
keyring=$DEBIAN_KEYRING
[ -r "$keyring" ] || die "$keyring is missing (install debian-archive-keyring)"
aptdir=$cache/apt
mkdir -p "$aptdir/state/lists/partial" "$aptdir/cache/archives/partial"
echo "deb-src [signed-by=$keyring] $mirror trixie main" >"$aptdir/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$aptdir/sources.list"
  -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null
  -o Dir::Etc::PreferencesParts=/dev/null
  -o "Dir::State=$aptdir/state"
  -o "Dir::Cache=$aptdir/cache"
  -o "APT::Sandbox::User=$(id -un)"
)
msg "fetching the $srcpkg source index from $mirror (trixie)"
run apt-get "${apt_opts[@]}" -q update
debver=$(apt-cache "${apt_opts[@]}" showsrc "$srcpkg" | awk '/^Version:/ {print $2}' | sort -V | tail -n 1)
[ -n "$debver" ] || die "no $srcpkg source package in trixie"
upver=${debver#*:}
upver=${upver%-*}
case $upver in 3.13.*) ;; *) die "unexpected $srcpkg version $debver" ;; esac

srcdir=$cache/src
mkdir -p "$srcdir"
orig=$srcdir/${srcpkg}_$upver.orig.tar.xz
msg "downloading $srcpkg $debver"
(cd "$srcdir" && run apt-get "${apt_opts[@]}" -q source --download-only "$srcpkg=$debver")
[ -f "$orig" ] || die "$orig was not downloaded"

# The upstream release signature, with the key Debian ships in debian/upstream.
if [ -f "$orig.asc" ]; then
  key=$srcdir/upstream-signing-key.gpg
  tar -xJOf "$srcdir/${srcpkg}_${debver#*:}.debian.tar.xz" debian/upstream/signing-key.asc \
    | awk '/^-----BEGIN PGP PUBLIC KEY BLOCK-----/ {inb=1; body=0; next}
           /^-----END PGP/ {inb=0; next}
           inb && !body {if ($0 ~ /^[[:space:]]*$/) body=1; next}
           inb && body && !/^=/ {print}' | base64 -d >"$key"
  msg "checking the upstream signature of $(basename "$orig")"
  run gpgv --keyring "$key" "$orig.asc" "$orig"
else
  msg "no upstream signature in the source package; relying on apt's checks"
fi

# --- build ---
build=$cache/build-$name
rm -rf "$build"
mkdir -p "$build"
msg "unpacking Python $upver"
run tar -xJf "$orig" -C "$build"
tree=$build/Python-$upver
[ -x "$tree/configure" ] || die "no $tree/configure"
stage=$build/stage
jobs=$(nproc)
msg "configuring (--disable-gil --enable-shared ${extra_configure[*]} --prefix=$prefix); log: $log"
(cd "$tree" && run ./configure --disable-gil --enable-shared "${extra_configure[@]}" --prefix="$prefix" \
  LDFLAGS="-Wl,-rpath,$prefix/lib")
msg "compiling with make -j$jobs (takes several minutes)"
(cd "$tree" && run make -j"$jobs")
msg "installing"
(cd "$tree" && run make install DESTDIR="$stage")
if [ ${#extra_configure[@]} -gt 0 ] && [ -d "$tree/Tools/tsan" ]; then
  # CPython's suppressions for its own known races, for scripts/tsan-free-threaded.sh
  mkdir -p "$stage$prefix/share/tsan"
  cp "$tree"/Tools/tsan/*.txt "$stage$prefix/share/tsan/"
fi

# Move the staged install into place whole (its paths already name $prefix), then check it.
staged_py=$stage$prefix/bin/python3.13t
[ -x "$staged_py" ] || die "make install produced no $staged_py"
rm -rf "$prefix.old"
if [ -e "$prefix" ]; then mv "$prefix" "$prefix.old"; fi
mv "$stage$prefix" "$prefix"
rm -rf "$prefix.old"

msg "checking the installed python"
if ! works; then
  "$py" -I -c '
import sys; print(sys.version, "GIL enabled:", sys._is_gil_enabled())
import ssl, sqlite3, ctypes, zlib, bz2, lzma, ensurepip, venv' >>"$log" 2>&1 || true
  msg "error: $py is missing a module the tests need or has the GIL on; last lines of $log:"
  tail -n 40 "$log" >&2
  exit 1
fi
venvtmp=$(mktemp -d)
trap 'rm -rf "$venvtmp"' EXIT
run "$py" -m venv "$venvtmp/venv"
run "$venvtmp/venv/bin/pip" --version
rm -rf "$build"
msg "built $("$py" -c 'import sys; print(sys.version.split()[0])') (free-threaded) in $prefix"
echo "$py"
