#!/bin/bash
# Teardown (as root, before and after every try): end the sessions a try opened for the user.
set -uo pipefail
user={{ vars.user|sh }}
loginctl terminate-user "$user" 2>/dev/null || true
for _ in $(seq 1 40); do
  loginctl show-user "$user" >/dev/null 2>&1 || break
  sleep 0.25
done
echo "no session of $user left"
