#!/bin/bash
# lxc as in the 2015 report: from ppa:ubuntu-lxc/lxc-stable if it still publishes for trusty, else
# trusty-backports, else trusty's own lxc 1.0; /var/lib/lab/lxc-source records which was used.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ppa_url={{ s.ppa_url|sh }}
suite={{ target.release|sh }}
packages=(
{% for package in packages %}
  {{ package|sh }}
{% endfor %}
)
# "Launchpad PPA for Ubuntu LXC team": the signing key of every ubuntu-lxc PPA
ppa_key=93763AC528C8C52568951BE0D5495F657635B973
ppa_list=/etc/apt/sources.list.d/ubuntu-lxc-lxc-stable.list

# fetch URL FILE; wget is on every 14.04 server install, curl may not be
fetch() {
  if command -v wget >/dev/null 2>&1; then
    wget -q -T 15 -t 2 -O "$2" "$1"
  elif command -v curl >/dev/null 2>&1; then
    curl -fsS -m 15 -o "$2" "$1"
  else
    echo "neither wget nor curl is installed" >&2
    return 2
  fi
}
probe() { fetch "$1" /dev/null; }

have_ppa_key() {
  # no grep -q: with pipefail an early exit of grep would fail the pipeline
  apt-key adv --list-public-keys --with-colons --fingerprint 2>/dev/null | grep -i "^fpr:.*$ppa_key" >/dev/null
}

import_ppa_key() {
  # the 2015 way first: add-apt-repository asks Launchpad which key and fetches it from the keyserver
  if ! command -v add-apt-repository >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends software-properties-common || true
  fi
  if command -v add-apt-repository >/dev/null 2>&1 && add-apt-repository -y ppa:ubuntu-lxc/lxc-stable; then
    # keep its key; the source line is ours, from ppa_url (which may point at a mirror of the PPA)
    rm -f /etc/apt/sources.list.d/ubuntu-lxc-lxc-stable-*.list /etc/apt/sources.list.d/ubuntu-lxc-lxc-stable-*.list.save
  fi
  if have_ppa_key; then return 0; fi
  echo "add-apt-repository did not import the PPA key; fetching $ppa_key from keyserver.ubuntu.com"
  local keyfile
  keyfile=$(mktemp)
  if fetch "http://keyserver.ubuntu.com/pks/lookup?op=get&search=0x$ppa_key" "$keyfile"; then
    apt-key add "$keyfile" || true
  fi
  rm -f "$keyfile"
  have_ppa_key
}

candidate() { apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'; }

source=""
if probe "$ppa_url/dists/$suite/Release"; then
  echo "the PPA answers: $ppa_url/dists/$suite/Release"
  if import_ppa_key; then
    echo "deb $ppa_url $suite main" > "$ppa_list"
    if apt-get update && apt-cache madison lxc | grep -F "$ppa_url/ $suite/" >/dev/null; then
      source=ppa
      # as the 2015 admin did after add-apt-repository: everything the PPA carries, upgraded
      apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold full-upgrade
    else
      echo "the PPA gave no lxc for $suite after apt-get update; not using it" >&2
      rm -f "$ppa_list"
      apt-get update
    fi
  else
    echo "the PPA answers but its key $ppa_key could not be imported; not using it" >&2
  fi
else
  echo "the PPA does not publish $suite (no answer from $ppa_url/dists/$suite/Release)"
fi
if [ -z "$source" ]; then
  if apt-cache madison lxc | grep -F " $suite-backports/" >/dev/null; then
    source=backports
  else
    source=stock
  fi
fi

apt_target=()
if [ "$source" = backports ]; then apt_target=(-t "$suite-backports"); fi
install=()
missing=()
missing_text=""
for package in "${packages[@]}"; do
  cand=$(candidate "$package")
  if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
    install+=("$package")
  else
    missing+=("$package")
    missing_text="$missing_text $package"
  fi
done
if [ -n "$missing_text" ]; then
  echo "WARNING: not available with lxc source $source, not installed:$missing_text" >&2
fi
lxc_found=no
for package in ${install[@]+"${install[@]}"}; do
  if [ "$package" = lxc ]; then lxc_found=yes; fi
done
if [ "$lxc_found" != yes ]; then
  echo "lxc is not available at all (source $source); cannot go on" >&2
  exit 1
fi
apt-get install -y --no-install-recommends ${apt_target[@]+"${apt_target[@]}"} "${install[@]}"

# cgm, the client the 2015 workaround uses, lived in cgmanager-utils in some releases
if ! command -v cgm >/dev/null 2>&1; then
  cand=$(candidate cgmanager-utils)
  if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
    apt-get install -y --no-install-recommends ${apt_target[@]+"${apt_target[@]}"} cgmanager-utils
  fi
fi

install -d -m 0755 /var/lib/lab
echo "$source" > /var/lib/lab/lxc-source
: > /var/lib/lab/lxc-missing
for package in ${missing[@]+"${missing[@]}"}; do echo "$package" >> /var/lib/lab/lxc-missing; done
echo "lxc source: $source"
dpkg-query -W "${install[@]}"
echo "lxc-start --version: $(lxc-start --version 2>/dev/null || dpkg-query -W -f='${Version}' lxc)"
echo "cgm: $(command -v cgm || echo 'not installed')"
