#!/bin/bash
{% from "lab/linger.sh.j2" import linger_on %}
set -euo pipefail
{{ linger_on(vars.user) }}
