#!/bin/bash
# How many of the job's sleeps run, and where: the cgroup of one of them.
user={{ vars.user|sh }}
mapfile -t pids < <(pgrep -u "$user" -x sleep)
{% raw %}
echo "tasks=${#pids[@]}"
if [ "${#pids[@]}" -gt 0 ]; then
{% endraw %}
  echo "cgroup=$(grep -E '^0::|name=systemd' "/proc/${pids[0]}/cgroup" | head -n 1 | cut -d: -f3)"
fi
echo "slice_tasks_max=$(systemctl show -p TasksMax --value "user-$(id -u "$user").slice")"
