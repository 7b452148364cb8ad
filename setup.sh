#!/bin/bash
# Set up a fresh Debian 12 / Ubuntu host (as root) for the lab: the system tools (apt), the Python
# packages (pip) and the HTML report's player (npm). With --tests, also what only the test suite
# uses: Chromium (the report page is tested in a real browser), an SSH server (a remote libvirt host
# is tested through qemu+ssh on loopback) and the test tools (pytest, ruff, ...). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    *) echo "setup: unknown option $arg (the one option is --tests: also what the test suite needs)" >&2; exit 2 ;;
  esac
done
packages=(
  vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  packer mmdebstrap fdisk e2fsprogs dnsmasq-base iptables openssh-client shellcheck sudo ca-certificates
)
# Chromium alone is ~290 MB unpacked: a lab does not need it, so the lab's setup does not wait for it
[ "$tests" = 1 ] && packages+=(chromium openssh-server)
command -v npm >/dev/null || packages+=(npm)  # Debian's, only where no Node.js/npm is installed yet
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root (apt-get needs it)" >&2; exit 2; fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Without udev, /dev/kvm stays root:root 0600; libvirt then re-probes qemu on every call (about a
# minute per domain define). Give it what udev's default rule gives it.
if [ -e /dev/kvm ] && [ ! -e /run/udev/control ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
# The versions the suite passed with (constraints.txt); the project itself editable (--tests: with its
# test tools).
extras=""
[ "$tests" = 1 ] && extras="[test]"
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e ".$extras"
# report.html inlines the asciinema player, pinned in lab/data/player/package-lock.json (node_modules
# is not committed; a wheel built after this carries the player's bundle).
if [ ! lab/data/player/node_modules/.package-lock.json -nt lab/data/player/package-lock.json ]; then
  echo "setup: installing the asciinema player (npm ci in lab/data/player)"
  npm ci --prefix lab/data/player --no-audit --no-fund --loglevel=error >/dev/null
fi
echo "setup: done ($(vagrant --version), $(packer version | head -n 1), python $(python3 -V | cut -d' ' -f2))"
