#!/bin/bash
# Undo fix {{ fix.id }}: put the original /etc/pam.d/sudo back and prove the lines are gone.
set -euo pipefail
pamfile=/etc/pam.d/sudo
if [ -e "$pamfile.lab-orig" ]; then
  mv -f "$pamfile.lab-orig" "$pamfile"
fi
{% for line in fix.vars.pam_lines %}
if grep -qxF {{ line|sh }} "$pamfile"; then
  echo "revert failed: $pamfile still has: "{{ line|sh }} >&2
  exit 1
fi
{% endfor %}
echo "$pamfile restored"
