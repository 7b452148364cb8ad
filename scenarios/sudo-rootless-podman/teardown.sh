#!/bin/bash
# Before and after every try: the user's containers gone, its sessions ended, its podman pause
# process stopped, so every try starts as the first one did. A lingering manager is left alone.
set -uo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
cd /
if [ -S "/run/user/$uid/bus" ]; then
  runuser -u "$user" -- env XDG_RUNTIME_DIR="/run/user/$uid" podman rm -af >/dev/null 2>&1 || true
fi
runuser -u "$user" -- podman rm -af >/dev/null 2>&1 || true
for session in $(loginctl list-sessions --no-legend | awk -v u="$user" '$3 == u { print $1 }'); do
  loginctl terminate-session "$session" 2>/dev/null || true
done
pkill -KILL -u "$user" -f 'catatonit|podman|conmon' 2>/dev/null || true
rm -rf "/tmp/podman-run-$uid" "/tmp/containers-user-$uid"
echo "no container, session or podman process of $user left"
