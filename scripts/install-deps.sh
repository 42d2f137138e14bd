#!/usr/bin/env bash
# Debian packages gil-adapt needs to build and test: a C compiler with the sanitizer
# runtimes (libasan/libubsan/libtsan come with gcc), make, and Python's venv module.
# Installs only what is missing; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v readelf >/dev/null || need+=(binutils)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
# Debian's own python3 (statically linked: the tests cover it) needs venv and headers.
if [ -x /usr/bin/python3 ]; then
  ver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=("python${ver}-venv")
  [ -f "/usr/include/python${ver}/Python.h" ] || need+=("python${ver}-dev")
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
