#!/bin/bash
# Undo fix {{ fix.id }}: remove the user's cgroups, deepest first (they are empty once the
# container is stopped).
set -euo pipefail
[ -e /run/lab-own-cgroups ] || { echo "nothing to revert"; exit 0; }
while read -r dir; do
  [ -d "$dir" ] || continue
  find "$dir" -depth -type d -exec rmdir {} \;
done < /run/lab-own-cgroups
left=$(while read -r dir; do [ -d "$dir" ] && echo "$dir"; done < /run/lab-own-cgroups || true)
if [ -n "$left" ]; then echo "revert failed: still present: $left" >&2; exit 1; fi
rm -f /run/lab-own-cgroups
echo "user cgroups removed"
