#!/bin/bash
# What lxc-start left behind: the container's state, its cgroups, whether the memory limit is in
# force, and the tail of the container's log. Prints key=value lines, then the log after a marker.
set -uo pipefail
dbusr={{ vars.user|sh }}
container={{ vars.container|sh }}
want_limit={{ vars.memory_limit_bytes|sh }}
home=$(getent passwd "$dbusr" | cut -d: -f6)
as_user() { (cd / && sudo -H -u "$dbusr" "$@"); }
state=$(as_user lxc-info -n "$container" -s -H 2>/dev/null || echo UNKNOWN)
echo "state=$state"
if [ "$state" = RUNNING ]; then
  pid=$(as_user lxc-info -n "$container" -p -H 2>/dev/null)
  echo "pid=$pid"
  limit=none
  while IFS=: read -r _ ctrl path; do
    case ",$ctrl," in
      *,memory,*) echo "memory_cgroup=$path"; f="/sys/fs/cgroup/memory$path/memory.limit_in_bytes"
                  [ -r "$f" ] && limit=$(cat "$f") ;;
      ,,) echo "unified_cgroup=$path"; f="/sys/fs/cgroup$path/memory.max"
          [ -r "$f" ] && [ "$limit" = none ] && limit=$(cat "$f") ;;
    esac
  done < "/proc/$pid/cgroup"
  echo "limit=$limit"
  if [ "$want_limit" = 0 ]; then echo "limit_ok=unset"
  elif [ "$limit" = "$want_limit" ]; then echo "limit_ok=yes"
  else echo "limit_ok=no"; fi
fi
echo "--- lab.log"
grep -E 'ERROR|WARN|NOTICE' "$home/.local/share/lxc/$container/lab.log" 2>/dev/null | tail -n 25 | cut -c1-400
exit 0
