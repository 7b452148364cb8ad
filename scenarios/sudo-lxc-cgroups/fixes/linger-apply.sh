#!/bin/bash
# Fix {{ fix.id }}: give the user a systemd --user manager of its own (lingering) to delegate from.
set -euo pipefail
dbusr={{ vars.user|sh }}
uid=$(id -u "$dbusr")
loginctl enable-linger "$dbusr"
for _ in $(seq 1 60); do
  [ -S "/run/user/$uid/bus" ] && systemctl is-active --quiet "user@$uid.service" && break
  sleep 0.5
done
systemctl is-active "user@$uid.service"
echo "user manager for $dbusr is up; bus at /run/user/$uid/bus"
