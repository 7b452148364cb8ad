#!/bin/bash
set -euo pipefail
sed -i '/^session optional pam_systemd.so # cgroup-lab$/d' /etc/pam.d/cron
if grep -q '# cgroup-lab' /etc/pam.d/cron; then echo "revert failed: /etc/pam.d/cron still has the lab's line" >&2; exit 1; fi
echo "pam_systemd removed from /etc/pam.d/cron"
