#!/bin/bash
# Fix {{ fix.id }}: add session lines to /etc/pam.d/sudo, keeping the original to restore.
set -euo pipefail
pamfile=/etc/pam.d/sudo
[ -e "$pamfile.lab-orig" ] || cp -a "$pamfile" "$pamfile.lab-orig"
{% for line in fix.vars.pam_lines %}
printf '%s\n' {{ line|sh }} >> "$pamfile"
{% endfor %}
echo "added to $pamfile:"
tail -n {{ fix.vars.pam_lines|length }} "$pamfile"
