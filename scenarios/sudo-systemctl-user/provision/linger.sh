#!/bin/bash
# The user's own systemd manager runs (lingering), as for a service account: the bug is not that
# there is no manager, but that sudo gives no way to reach it.
set -euo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
loginctl enable-linger "$user"
for _ in $(seq 1 120); do
  [ -S "/run/user/$uid/bus" ] && systemctl is-active --quiet "user@$uid.service" && break
  sleep 0.5
done
systemctl is-active "user@$uid.service"
echo "user manager of $user runs; its bus: /run/user/$uid/bus"
