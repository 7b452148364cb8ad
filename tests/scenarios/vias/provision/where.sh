#!/bin/bash
# lab-where: what a process started through a via ends up with (its user, cgroups, logind session,
# loginuid and audit session, environment, limits); a nofile limit for viauser in limits.conf shows
# whether pam_limits ran, a TasksMax on viauser's slice where the slice holds a process.
set -euo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
cat > /usr/local/bin/lab-where <<'SCRIPT'
#!/bin/sh
echo "user=$(id -un)"
echo "cgroup=$(grep -E '^0::|name=systemd' /proc/self/cgroup | head -n 1 | cut -d: -f3)"
s=$(sed -n 's/.*\/session-\([0-9a-z]*\)\.scope.*/\1/p' /proc/self/cgroup | head -n 1)
if [ -n "$s" ]; then
  loginctl show-session "$s" -p Name -p Type -p Class -p Service -p TTY -p Remote 2>&1 | sed 's/^/session./'
  echo "session=$s"
else
  echo "session=none"
fi
echo "XDG_SESSION_ID=${XDG_SESSION_ID:-unset}"
echo "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-unset}"
echo "loginuid=$(cat /proc/self/loginuid)"
echo "nofile=$(ulimit -n)"
# the tightest pids.max on the way from the process's cgroup to the root (cgroup v2 or v1 pids)
path=$(grep -E '^0::' /proc/self/cgroup | cut -d: -f3); base=/sys/fs/cgroup
if [ ! -e "$base/cgroup.controllers" ]; then
  path=$(grep -E ':pids:' /proc/self/cgroup | cut -d: -f3); base=/sys/fs/cgroup/pids
fi
tasks=max
while [ -n "$path" ]; do
  v=$(cat "$base$path/pids.max" 2>/dev/null || echo max)
  [ "$v" != max ] && { tasks="$v at $path"; break; }
  [ "$path" = / ] && break
  path=$(dirname "$path")
done
echo "tasks_max=$tasks"
SCRIPT
chmod 0755 /usr/local/bin/lab-where
printf '%s soft nofile 4321\n%s hard nofile 8642\n' "$user" "$user" > /etc/security/limits.d/90-lab.conf
install -d "/etc/systemd/system/user-$uid.slice.d"
printf '[Slice]\nTasksMax=77\n' > "/etc/systemd/system/user-$uid.slice.d/50-lab.conf"
systemctl daemon-reload
echo "lab-where installed; $user: nofile 4321/8642 in limits.conf, TasksMax=77 on user-$uid.slice"
