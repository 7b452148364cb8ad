#!/bin/bash
# Undo fix {{ fix.id }}: remove the cgroups `cgm create all` made for the user (nested under whatever
# session ran it) in every hierarchy, deepest first; they are empty once the container is stopped.
set -euo pipefail
dbusr={{ vars.user|sh }}

# the 2015 way; it only finds the cgroup when run from the session that created it
if command -v cgm >/dev/null 2>&1; then
  cgm remove all "$dbusr" >/dev/null 2>&1 || true
fi

# cgmanager may keep the hierarchies in its own mount namespace: mount any we cannot see
hierarchies=$(awk '$3 == "cgroup" { print $2 }' /proc/mounts | sort -u)
tmp=""
cleanup() {
  if [ -n "$tmp" ]; then
    for m in "$tmp"/*; do
      if [ -d "$m" ]; then umount "$m" 2>/dev/null || true; rmdir "$m" 2>/dev/null || true; fi
    done
    rmdir "$tmp" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if [ -z "$hierarchies" ]; then
  tmp=$(mktemp -d /run/lab-cgm-revert.XXXXXX)
  # one mount per hierarchy: controllers that share a hierarchy id are mounted together
  while read -r id opts; do
    mkdir "$tmp/$id"
    if ! mount -t cgroup -o "$opts" cgroup "$tmp/$id"; then
      echo "warning: could not mount the cgroup hierarchy $opts; not checked" >&2
      rmdir "$tmp/$id"
    fi
  done < <(awk 'NR > 1 && $2 > 0 && $4 == 1 { c[$2] = ($2 in c) ? c[$2] "," $1 : $1 }
                END { for (h in c) print h, c[h] }' /proc/cgroups)
  mkdir "$tmp/systemd"
  mount -t cgroup -o none,name=systemd cgroup "$tmp/systemd" 2>/dev/null || rmdir "$tmp/systemd"
  hierarchies=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | sort)
fi
if [ -z "$hierarchies" ]; then
  echo "revert failed: no cgroup hierarchy could be found or mounted" >&2
  exit 1
fi

found() { find "$1" -mindepth 1 -depth -type d -name "$dbusr" 2>/dev/null || true; }
removed=0
while read -r mnt; do
  while read -r dir; do
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then continue; fi
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    if [ ! -d "$dir" ]; then
      echo "removed $dir"
      removed=$((removed + 1))
    fi
  done <<< "$(found "$mnt")"
done <<< "$hierarchies"

left=$(while read -r mnt; do found "$mnt"; done <<< "$hierarchies")
if [ -n "$left" ]; then
  echo "revert failed: cgroups of $dbusr still present (is the container stopped?):" >&2
  echo "$left" >&2
  exit 1
fi
echo "no cgroups of $dbusr left ($removed removed)"
