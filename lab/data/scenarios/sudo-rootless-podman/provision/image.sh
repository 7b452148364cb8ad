#!/bin/bash
# An image built offline (no registry reachable): a busybox-static root filesystem imported into
# the user's own rootless store (the engine's snippet lab/busybox.sh.j2).
{% from "lab/busybox.sh.j2" import podman_image %}
set -euo pipefail
{{ podman_image(vars.user, vars.image) }}
