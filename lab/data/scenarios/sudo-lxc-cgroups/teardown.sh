#!/bin/bash
# Back to the baseline between fixes, without a reboot: container stopped, its log emptied.
set -uo pipefail
dbusr={{ vars.user|sh }}
container={{ vars.container|sh }}
home=$(getent passwd "$dbusr" | cut -d: -f6)
as_user() { (cd / && sudo -H -u "$dbusr" "$@"); }
state=$(as_user lxc-info -n "$container" -s -H 2>/dev/null || echo UNKNOWN)
if [ "$state" != STOPPED ] && [ "$state" != UNKNOWN ]; then
  as_user lxc-stop -n "$container" -k >/dev/null 2>&1 || true
fi
# a failed start can leave its monitor behind
pkill -u "$dbusr" -f "lxc-start -n $container" 2>/dev/null || true
pkill -u "$dbusr" -f "\[lxc monitor\].* $container" 2>/dev/null || true
for _ in $(seq 1 40); do
  state=$(as_user lxc-info -n "$container" -s -H 2>/dev/null || echo UNKNOWN)
  [ "$state" = STOPPED ] && break
  sleep 0.25
done
: > "$home/.local/share/lxc/$container/lab.log"
chown "$dbusr:$dbusr" "$home/.local/share/lxc/$container/lab.log"
echo "state=$state"
[ "$state" = STOPPED ]
