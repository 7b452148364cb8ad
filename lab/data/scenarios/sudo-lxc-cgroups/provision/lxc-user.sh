#!/bin/bash
# dbusr's unprivileged lxc setup and the container, created offline from the busybox template.
{% from "lab/lxc.sh.j2" import lxc_user, lxc_busybox %}
set -euo pipefail
dbusr={{ vars.user|sh }}
container={{ vars.container|sh }}
{{ lxc_user(vars.user, vars.idmap_key) }}
{{ lxc_busybox(vars.user, vars.container) }}
lxcpath="$lxc_home/.local/share/lxc"
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
