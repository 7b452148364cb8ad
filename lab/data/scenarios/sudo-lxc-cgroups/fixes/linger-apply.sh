#!/bin/bash
# Fix {{ fix.id }}: give the user a systemd --user manager of its own (lingering) to delegate from.
set -euo pipefail
{% from "lab/linger.sh.j2" import linger_on %}
{{ linger_on(vars.user) }}
