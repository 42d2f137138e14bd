# Sourced by the scripts that fetch from Debian (build-python.sh, test-debian-python.sh):
# debian_mirror prints the Debian mirror the machine's apt already uses
# (GIL_ADAPT_DEBIAN_MIRROR overrides it; default http://deb.debian.org/debian), and
# DEBIAN_KEYRING is the machine's Debian archive keyring that checks what it serves.
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

debian_mirror() {
  local mirror=${GIL_ADAPT_DEBIAN_MIRROR:-}
  if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^][ ]+/debian/?([[:space:]]|$)' | head -n 1 | tr -d '[:space:]' || true)
    mirror=${mirror%/}
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}
