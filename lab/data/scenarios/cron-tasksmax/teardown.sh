#!/bin/bash
# Stop every sleep the job left, and the user's sessions; nothing of the user may run before a try.
user={{ vars.user|sh }}
pkill -KILL -u "$user" -x sleep 2>/dev/null || true
for _ in $(seq 1 50); do
  pgrep -u "$user" -x sleep >/dev/null || break
  sleep 0.1
done
if pgrep -u "$user" -x sleep >/dev/null; then echo "sleeps of $user still run" >&2; exit 1; fi
