#!/bin/bash
# The user's own systemd manager runs (lingering), as for a service account: the bug is not that
# there is no manager, but that sudo gives no way to reach it.
set -euo pipefail
{% from "lab/linger.sh.j2" import linger_on %}
{{ linger_on(vars.user) }}
