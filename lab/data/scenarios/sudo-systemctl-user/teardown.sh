#!/bin/bash
# Before and after every try: end the sessions a try opened for the user (an SSH login, machinectl
# shell), keeping its lingering manager.
set -uo pipefail
user={{ vars.user|sh }}
for session in $(loginctl list-sessions --no-legend | awk -v u="$user" '$3 == u { print $1 }'); do
  loginctl terminate-session "$session" 2>/dev/null || true
done
uid=$(id -u "$user")
for _ in $(seq 1 60); do
  [ -S "/run/user/$uid/bus" ] && systemctl is-active --quiet "user@$uid.service" && break
  sleep 0.5
done
echo "no session of $user left; user@$uid: $(systemctl is-active "user@$uid.service")"
