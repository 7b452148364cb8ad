#!/bin/bash
# pam_systemd in cron's PAM stack: logind gives each job a session (class background) in the user's slice.
set -euo pipefail
grep -q '^session optional pam_systemd.so # cgroup-lab$' /etc/pam.d/cron ||
  printf 'session optional pam_systemd.so # cgroup-lab\n' >> /etc/pam.d/cron
grep -n pam_systemd /etc/pam.d/cron
