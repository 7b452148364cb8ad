#!/bin/bash
# Undo fix {{ fix.id }}: no lingering, no user manager left behind.
set -euo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
loginctl disable-linger "$user"
loginctl terminate-user "$user" 2>/dev/null || true
for _ in $(seq 1 60); do
  systemctl is-active --quiet "user@$uid.service" || break
  sleep 0.5
done
if systemctl is-active --quiet "user@$uid.service"; then echo "revert failed: user@$uid still active" >&2; exit 1; fi
if [ -e "/var/lib/systemd/linger/$user" ]; then echo "revert failed: linger still enabled" >&2; exit 1; fi
echo "lingering disabled for $user"
