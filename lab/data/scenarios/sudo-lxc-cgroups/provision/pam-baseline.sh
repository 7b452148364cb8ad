#!/bin/bash
# Debian enables pam_cgfs in common-session*, which moves every session into its own cgroups and
# hides the bug. The 2014 systems had no such line, so the baseline removes it.
set -euo pipefail
DEBIAN_FRONTEND=noninteractive pam-auth-update --package --remove cgfs
if grep -l pam_cgfs /etc/pam.d/common-session /etc/pam.d/common-session-noninteractive; then
  echo "pam_cgfs is still enabled; the bug would be hidden" >&2
  exit 1
fi
echo "baseline PAM: pam_cgfs removed from common-session*"
