#!/bin/bash
# Fix {{ fix.id }}: give the user a systemd manager of its own (lingering) for podman to talk to.
set -euo pipefail
{% from "lab/linger.sh.j2" import linger_on %}
{{ linger_on(vars.user) }}
