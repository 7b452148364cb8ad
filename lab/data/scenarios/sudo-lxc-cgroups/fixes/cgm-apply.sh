#!/bin/bash
# Fix {{ fix.id }} changes no configuration: the workaround is in the start command (cgm create, chown,
# movepid). This only checks that cgm and a running cgmanager are there for it.
set -euo pipefail
dbusr={{ vars.user|sh }}
id "$dbusr" >/dev/null
if ! command -v cgm >/dev/null 2>&1; then
  echo "cgm is not installed (package cgmanager, or cgmanager-utils on some releases)" >&2
  exit 1
fi
if ! dpkg-query -W cgmanager >/dev/null 2>&1; then
  echo "cgmanager is not installed" >&2
  exit 1
fi
if ! cgm ping; then
  echo "cgmanager does not answer cgm ping (is the cgmanager service running?)" >&2
  exit 1
fi
echo "cgm $(command -v cgm) and cgmanager $(dpkg-query -W -f='${Version}' cgmanager) answer; nothing to change for $dbusr"
