#!/bin/bash
# Before and after every try: the user's containers gone, its sessions ended, its podman pause
# process stopped, so every try starts as the first one did. A lingering manager is left alone.
set -uo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
cd /
if [ -S "/run/user/$uid/bus" ]; then
  runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" podman rm -af >/dev/null 2>&1 || true
fi
runuser -u "$user" -- env -u XDG_RUNTIME_DIR -u DBUS_SESSION_BUS_ADDRESS HOME="$home" podman rm -af >/dev/null 2>&1 ||
  true
for session in $(loginctl list-sessions --no-legend | awk -v u="$user" '$3 == u { print $1 }'); do
  loginctl terminate-session "$session" 2>/dev/null || true
done
pkill -KILL -u "$user" -f 'catatonit|podman|conmon' 2>/dev/null || true
rm -rf "/tmp/podman-run-$uid" "/tmp/containers-user-$uid"
# Unless the user lingers, its manager must be gone too: a login's manager outlives the session by
# logind's stop delay, and podman without XDG_RUNTIME_DIR finds /run/user/UID and uses it.
if [ ! -e "/var/lib/systemd/linger/$user" ]; then
  loginctl terminate-user "$user" 2>/dev/null || true
  for _ in $(seq 1 60); do
    if ! systemctl is-active --quiet "user@$uid.service" && [ ! -d "/run/user/$uid" ]; then break; fi
    sleep 0.5
  done
  if systemctl is-active --quiet "user@$uid.service" || [ -d "/run/user/$uid" ]; then
    echo "teardown failed: the manager or /run/user/$uid of $user is still there" >&2
    exit 1
  fi
fi
echo "no container, session or podman process of $user left"
