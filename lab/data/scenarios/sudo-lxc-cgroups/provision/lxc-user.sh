#!/bin/bash
# dbusr's unprivileged lxc setup and the container, created offline from the busybox template.
set -euo pipefail
dbusr={{ vars.user|sh }}
container={{ vars.container|sh }}
home=$(getent passwd "$dbusr" | cut -d: -f6)
uid_start=$(grep "^$dbusr:" /etc/subuid | cut -d: -f2)
uid_count=$(grep "^$dbusr:" /etc/subuid | cut -d: -f3)
gid_start=$(grep "^$dbusr:" /etc/subgid | cut -d: -f2)
gid_count=$(grep "^$dbusr:" /etc/subgid | cut -d: -f3)

grep -q "^$dbusr veth" /etc/lxc/lxc-usernet 2>/dev/null || printf '%s veth lxcbr0 10\n' "$dbusr" >> /etc/lxc/lxc-usernet

as_user() { sudo -H -u "$dbusr" "$@"; }
as_user mkdir -p "$home/.config/lxc" "$home/.local/share/lxc"
chmod o+x "$home" "$home/.local" "$home/.local/share"
idmap_key={{ vars.idmap_key|sh }}
printf '%s = u 0 %s %s\n%s = g 0 %s %s\n' "$idmap_key" "$uid_start" "$uid_count" \
  "$idmap_key" "$gid_start" "$gid_count" > "$home/.config/lxc/default.conf"
chown "$dbusr:$dbusr" "$home/.config/lxc/default.conf"

lxcpath="$home/.local/share/lxc"
if [ ! -e "$lxcpath/$container/config" ]; then
  template={{ vars.container_template|sh }}
  echo "creating container $container (template $template), this takes a few seconds"
  (cd / && as_user lxc-create -t "$template" -n "$container")
fi
config="$lxcpath/$container/config"
sed -i '/^# cgroup-lab/,$d' "$config"
{
  echo "# cgroup-lab: the lines below are the lab's; lab.up rewrites them"
{% for line in vars.container_config %}
  echo {{ line|sh }}
{% endfor %}
{% if vars.memory_limit_key %}
  echo {{ (vars.memory_limit_key ~ " = " ~ vars.memory_limit_bytes)|sh }}
{% endif %}
  echo {{ vars.log_keys[0]|sh }}" = $lxcpath/$container/lab.log"
  echo {{ vars.log_keys[1]|sh }}" = INFO"
} >> "$config"
chown "$dbusr:$dbusr" "$config"
echo "container $container ready in $lxcpath"
