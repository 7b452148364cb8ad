#!/bin/bash
# An image built offline (no registry reachable): a busybox-static root filesystem imported into
# the user's own rootless store. Then nothing of podman is left running for the user.
set -euo pipefail
user={{ vars.user|sh }}
image={{ vars.image|sh }}
home=$(getent passwd "$user" | cut -d: -f6)
cd /
# as the user, without the provisioning session's XDG_RUNTIME_DIR (podman refuses one it does not own)
as_user() { runuser -u "$user" -- env -u XDG_RUNTIME_DIR -u DBUS_SESSION_BUS_ADDRESS HOME="$home" "$@"; }
as_user sh -c 'rm -rf "$HOME/bb" && mkdir -p "$HOME/bb/bin" && cp /bin/busybox "$HOME/bb/bin/" &&
  for a in sh cat sleep ls; do ln -sf busybox "$HOME/bb/bin/$a"; done'
tar -C "$home/bb" -c . | as_user podman import - "$image" 2>&1 | tail -n 3
as_user podman image exists "$image"
# the first podman call leaves a rootless pause process behind: do not let it shape the baseline
pkill -KILL -u "$user" 2>/dev/null || true
rm -rf "/tmp/podman-run-$(id -u "$user")" "/tmp/containers-user-$(id -u "$user")"
echo "image $image is in $user's rootless store"
