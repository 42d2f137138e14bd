#!/usr/bin/env bash
# Provides promtool for the test suite: tests/test_metrics_series.py lints the exporter's
# output with `promtool check metrics` (and skips that check without it).
#
#   scripts/get-promtool.sh
#
# A promtool on PATH is used as it is. Otherwise Debian's prometheus package (~19 MB to
# download) is fetched with `apt-get download` (no root; apt checks it against the
# signed package index) and only its usr/bin/promtool is unpacked, into
# ${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}/bin: installing the package would also
# install, enable and start a Prometheus server (and its web assets, ~330 MB). Later runs
# reuse the unpacked promtool. Progress goes to stderr; promtool's path is the last line
# on stdout.
set -euo pipefail

cache=${GIL_ADAPT_CACHE:-$HOME/.cache/gil-adapt}
bin=$cache/bin/promtool

msg() { echo "get-promtool: $*" >&2; }
die() { msg "error: $*"; exit 1; }
works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if path=$(command -v promtool) && works "$path"; then
  echo "$path"
  exit 0
fi
if works "$bin"; then
  echo "$bin"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  die "needs apt-get and dpkg-deb (Debian) to fetch promtool"
mkdir -p "$cache/bin"
tmp=$(mktemp -d "$cache/promtool.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
msg "fetching Debian's prometheus package for its promtool"
(cd "$tmp" && apt-get download -q prometheus >&2) ||
  die "apt-get download prometheus failed (no package lists? apt-get update first)"
dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
works "$tmp/usr/bin/promtool" || die "the unpacked promtool does not run"
mv -f "$tmp/usr/bin/promtool" "$bin"  # whole, at once: concurrent runs are safe
echo "$bin"
