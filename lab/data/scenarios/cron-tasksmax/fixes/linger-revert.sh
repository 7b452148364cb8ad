#!/bin/bash
{% from "lab/linger.sh.j2" import linger_off %}
set -euo pipefail
{{ linger_off(vars.user) }}
