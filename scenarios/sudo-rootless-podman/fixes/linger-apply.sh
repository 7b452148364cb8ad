#!/bin/bash
# Fix {{ fix.id }}: give the user a systemd manager of its own (lingering) for podman to talk to.
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
