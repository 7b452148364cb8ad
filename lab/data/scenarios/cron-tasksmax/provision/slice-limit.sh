#!/bin/bash
# A TasksMax on the user's slice (as an admin limits a user), and lab-forks: starts N sleeps in the
# background (dash stops at the first fork the kernel refuses), the way a runaway job forks.
set -euo pipefail
user={{ vars.user|sh }}
uid=$(id -u "$user")
install -d "/etc/systemd/system/user-$uid.slice.d"
printf '[Slice]\nTasksMax=%s\n' {{ vars.tasks_max|sh }} > "/etc/systemd/system/user-$uid.slice.d/50-lab-tasks.conf"
systemctl daemon-reload
cat > /usr/local/bin/lab-forks <<'SCRIPT'
#!/bin/sh
# lab-forks N: N sleeps in the background; prints how many it started
n=0
while [ "$n" -lt "$1" ]; do
  sleep 300 &
  n=$((n + 1))
done
echo "started=$n"
SCRIPT
chmod 0755 /usr/local/bin/lab-forks
echo "user-$uid.slice: TasksMax=$(systemctl show -p TasksMax --value "user-$uid.slice")"
