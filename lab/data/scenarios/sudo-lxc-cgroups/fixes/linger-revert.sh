#!/bin/bash
# Undo fix {{ fix.id }}: no lingering, no user manager left behind.
set -euo pipefail
{% from "lab/linger.sh.j2" import linger_off %}
{{ linger_off(vars.user) }}
