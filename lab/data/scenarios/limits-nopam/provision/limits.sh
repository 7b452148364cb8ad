#!/bin/bash
# The admin raises appuser's open-files limit in limits.conf, the PAM way (pam_limits reads it).
set -euo pipefail
printf '%s soft nofile %s\n%s hard nofile %s\n' {{ vars.user|sh }} {{ vars.soft|sh }} {{ vars.user|sh }} {{ vars.hard|sh }} \
  > /etc/security/limits.d/90-lab-nofile.conf
cat /etc/security/limits.d/90-lab-nofile.conf
