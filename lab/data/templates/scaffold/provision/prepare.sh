#!/bin/bash
# Provisioning (as root; lab.build runs it into the box): put the guest into the state the bug needs. Here: nothing
# lingers for the user, so the baseline starts without a user manager.
set -euo pipefail
user={{ vars.user|sh }}
loginctl disable-linger "$user" 2>/dev/null || true
echo "prepared: $user has no lingering user manager"
