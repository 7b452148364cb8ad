#!/bin/bash
# Fix {{ fix.id }} (what `cgm create all; cgm chown all` did): a cgroup named after the user in
# every mounted hierarchy, owned by the user, with cpuset values copied from the parent.
set -euo pipefail
dbusr={{ vars.user|sh }}
uid=$(id -u "$dbusr"); gid=$(id -g "$dbusr")
: > /run/lab-own-cgroups
# mountinfo: the mount point is field 5; the filesystem type follows the " - " separator
sed -n 's/^\([^ ]* \)\{4\}\([^ ]*\) .* - \(cgroup\|cgroup2\) .*/\2/p' /proc/self/mountinfo | sort -u |
while read -r mnt; do
  dir="$mnt/$dbusr"
  mkdir -p "$dir"
  for f in cpuset.cpus cpuset.mems; do
    if [ -e "$mnt/$f" ] && [ -e "$dir/$f" ] && [ -z "$(cat "$dir/$f")" ]; then cat "$mnt/$f" > "$dir/$f"; fi
  done
  # cgroup v2: leave cgroup.subtree_control empty, a process may not enter a cgroup that
  # delegates controllers; lxc enables them itself once its monitor has moved to a child.
  chown -R "$uid:$gid" "$dir"
  echo "$dir" >> /run/lab-own-cgroups
done
echo "created and chowned to $dbusr:"
cat /run/lab-own-cgroups
