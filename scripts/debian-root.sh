# Sourced by the scripts that fetch from Debian or test inside a Debian root
# (build-python.sh, test-debian-python.sh, test-aarch64.sh). Provides:
#
#   debian_mirror            the Debian mirror the machine's apt already uses
#                            (GIL_ADAPT_DEBIAN_MIRROR overrides it; default
#                            http://deb.debian.org/debian)
#   DEBIAN_KEYRING           the machine's Debian archive keyring, which checks what the
#                            mirror serves
#   ensure_root DIR SUITE ARCH READY PKG...
#                            a Debian SUITE root for ARCH in DIR unless the command READY
#                            succeeds already (checked again afterwards): debootstrap
#                            --variant=minbase, then PKG... with apt inside it, made in
#                            DIR.tmp and moved into place whole (a DIR that exists is added
#                            to), one run at a time (flock on DIR.lock). Output goes to
#                            DIR.log; on failure its tail is shown and the script exits
#                            with status 3. A foreign ARCH needs its qemu-user interpreter
#                            registered with binfmt_misc first.
#   in_root DIR CMD...       CMD inside the root DIR, with /proc, /sys and /dev mounted in a
#                            private mount namespace (they go away with the command), in a
#                            clean environment plus ROOT_ENV (an array of NAME=VALUE)
#   copy_tree DIR            the working tree (tracked and untracked-but-not-ignored files)
#                            into DIR/src; the CA file the machine's pip trusts (a site's TLS
#                            proxy) into the root, named in ROOT_ENV as PIP_CERT
#
# Needs root or sudo for debootstrap, mounts and chroot.
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
ROOT_ENV=()
ROOT_SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  ROOT_SUDO=sudo
fi

debian_mirror() {
  local mirror=${GIL_ADAPT_DEBIAN_MIRROR:-}
  if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^][ ]+/debian/?([[:space:]]|$)' | head -n 1 | tr -d '[:space:]' || true)
    mirror=${mirror%/}
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}

_root_run() {  # _root_run LOG CMD...: output to LOG; on failure, its tail and exit 3
  local log=$1
  shift
  echo "+ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "error: failed: $*; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 3
  fi
}

in_root() {
  $ROOT_SUDO unshare --mount --fork -- sh -ec '
    r=$1; shift
    mount --make-rprivate /
    mount -t proc proc "$r/proc"
    mount --rbind /sys "$r/sys"
    mount --rbind /dev "$r/dev"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' \
    sh "$1" "${ROOT_ENV[@]}" "${@:2}"
}

ensure_root() {
  local dir=$1 suite=$2 arch=$3 ready=$4 log=$1.log
  shift 4
  mkdir -p "$(dirname "$dir")"
  exec 9>"$dir.lock"
  flock 9
  if ! $ready; then
    echo "making a Debian $suite root ($arch) with $* in $dir (minutes; log: $log)" >&2
    : >"$log"
    _make_root "$dir" "$suite" "$arch" "$log" "$@"
    $ready || { echo "error: the root lacks what was asked for after apt (see $log)" >&2; exit 3; }
  fi
  exec 9>&-
}

_make_root() {
  local dir=$1 suite=$2 arch=$3 log=$4
  shift 4
  if [ -n "$ROOT_SUDO" ] && ! command -v sudo >/dev/null; then
    echo "error: needs root or sudo (debootstrap, chroot)" >&2
    exit 3
  fi
  if ! command -v debootstrap >/dev/null; then
    _root_run "$log" $ROOT_SUDO apt-get update -q
    _root_run "$log" $ROOT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends debootstrap
  fi
  [ -r "$DEBIAN_KEYRING" ] || { echo "error: $DEBIAN_KEYRING is missing" >&2; exit 3; }
  local tmp=$dir.tmp
  $ROOT_SUDO rm -rf "$tmp"
  if [ -x "$dir/usr/bin/apt-get" ]; then
    $ROOT_SUDO mv "$dir" "$tmp"
  else
    _root_run "$log" $ROOT_SUDO debootstrap --arch="$arch" --variant=minbase \
      --keyring="$DEBIAN_KEYRING" --include=ca-certificates "$suite" "$tmp" "$(debian_mirror)"
  fi
  # A mirror that is a snapshot serves a Release file past its Valid-Until date: its
  # signature is still checked, its age is not.
  local apt_opts=(-o Acquire::Check-Valid-Until=false)
  _root_run "$log" in_root "$tmp" apt-get "${apt_opts[@]}" update -q
  _root_run "$log" in_root "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" \
    install -y -q --no-install-recommends "$@"
  _root_run "$log" in_root "$tmp" apt-get clean
  $ROOT_SUDO rm -rf "$dir"
  $ROOT_SUDO mv "$tmp" "$dir"
}

copy_tree() {
  local dir=$1
  $ROOT_SUDO rm -rf "$dir/src"
  $ROOT_SUDO mkdir -p "$dir/src"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | $ROOT_SUDO tar -xf - -C "$dir/src"
  local cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
  if [ -n "$cert" ] && [ -r "$cert" ]; then
    $ROOT_SUDO cp "$cert" "$dir/etc/host-pip-ca.crt"
    ROOT_ENV+=(PIP_CERT=/etc/host-pip-ca.crt)
  fi
}
