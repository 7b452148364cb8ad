"""The trusty target can only be rendered and validated here: check what it renders, run the
rendered scripts against stub commands where that is cheap, shellcheck them and packer-validate
the box template that would build it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lab.config import settings
from lab.core.files import write_files
from lab.core.resources import packer_file
from lab.machine.resolve import resolve
from lab.render.lab import LabFacts, render_all
from lab.render.plan import plan

PACKER_TEMPLATE = packer_file("trusty.pkr.hcl")
PRESEED = packer_file("http") / "trusty-preseed.cfg"
SEED_PACKAGES = ["lxc", "lxc-templates", "uidmap", "libpam-cgm", "cgmanager"]
DEFAULT_PPA = "http://ppa.launchpad.net/ubuntu-lxc/lxc-stable/ubuntu"
ISO_SHA256 = "b17d7c1e9d0321ad5810ba77b69aef43f0f29a5422b08120e6ee0576c4527c0e"

APT_SOURCES = "provision/01-kernel-apt-sources.sh"
KERNEL = "provision/02-kernel-kernel.sh"
ASSERT_KERNEL = "provision/03-lab-assert-kernel.sh"
USERS = "provision/04-lab-users.sh"
LXC_PACKAGES = "provision/05-lab-lxc-packages-trusty.sh"
LXC_USER = "provision/06-lab-lxc-user.sh"


def facts() -> LabFacts:
    return LabFacts(provider="virtualbox", libvirt_driver="qemu", box_name="lab/trusty", box_url="",
                    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample lab", network_octet=150)


def trusty_settings(tmp_path: Path, **flags: str) -> settings.Settings:
    return settings.load(environ={}, flags={"target": "trusty", **flags}, project_dir=tmp_path)


def render_trusty(tmp_path: Path, **flags: str) -> dict[str, str]:
    """Every file lab.render writes: the Vagrantfile, provisioning and the scenario's root scripts."""
    s = trusty_settings(tmp_path, **flags)
    return {**render_all(resolve(s), facts()), **plan(resolve(s), facts()).scripts}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return render_trusty(tmp_path)


@pytest.fixture
def written(tmp_path: Path, files: dict[str, str]) -> Path:
    out = tmp_path / "lab"
    write_files(out, files)
    return out


# --- (a) what the trusty target renders ---------------------------------------------------------

def test_trusty_renders_every_stage_script_and_fix(files: dict[str, str]) -> None:
    for rel in (APT_SOURCES, KERNEL, ASSERT_KERNEL, USERS, LXC_PACKAGES, LXC_USER, "fixes/cgm-apply.sh",
                "fixes/cgm-revert.sh", "fixes/pam-systemd-apply.sh", "fixes/pam-systemd-revert.sh",
                "observe.sh", "teardown.sh"):
        assert rel in files, f"{rel} not rendered; got {sorted(files)}"


@pytest.mark.parametrize("rel", [APT_SOURCES, KERNEL, ASSERT_KERNEL, LXC_PACKAGES,
                                 "fixes/cgm-apply.sh", "fixes/cgm-revert.sh"])
def test_root_scripts_are_strict_bash(files: dict[str, str], rel: str) -> None:
    lines = files[rel].splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1].startswith("# "), "second line must say why the script exists"
    assert "set -euo pipefail" in lines[:6]


def test_seed_package_set_is_installed_from_the_list(files: dict[str, str]) -> None:
    text = files[LXC_PACKAGES]
    block = re.search(r"^packages=\(\n(.*?)^\)$", text, re.S | re.M)
    assert block, "no packages=( ... ) array in lxc-packages.sh"
    assert block.group(1).split() == SEED_PACKAGES
    install = 'apt-get install -y --no-install-recommends ${apt_target[@]+"${apt_target[@]}"} "${install[@]}"'
    assert install in text


def test_lxc_source_fallbacks_are_all_there(files: dict[str, str]) -> None:
    text = files[LXC_PACKAGES]
    assert f"ppa_url={DEFAULT_PPA}\n" in text
    assert 'probe "$ppa_url/dists/$suite/Release"' in text
    assert "add-apt-repository -y ppa:ubuntu-lxc/lxc-stable" in text
    assert "/etc/apt/sources.list.d/ubuntu-lxc-lxc-stable.list" in text
    for word in ("source=ppa", "source=backports", "source=stock"):
        assert word in text
    assert 'apt_target=(-t "$suite-backports")' in text
    assert 'echo "$source" > /var/lib/lab/lxc-source' in text
    assert "lxc-start --version" in text


def test_apt_mirror_falls_back_to_old_releases(tmp_path: Path) -> None:
    text = render_trusty(tmp_path, ubuntu_mirror="http://mirror.example/ubuntu",
                         ubuntu_old_mirror="http://old.example/ubuntu")[APT_SOURCES]
    assert "primary=http://mirror.example/ubuntu\n" in text
    assert "old=http://old.example/ubuntu\n" in text
    assert 'if probe "$primary/dists/$suite/Release"; then' in text
    assert 'elif probe "$old/dists/$suite/Release"; then' in text
    assert "wget -q -T 15" in text
    for pocket in ('"$suite"', '"$suite-updates"', '"$suite-security"', '"$suite-backports"'):
        assert pocket in text
    assert "apt-get update" in text


def test_settings_reach_shell_quoted(tmp_path: Path) -> None:
    # a URL with shell-special characters (valid per settings) must stay one word
    url = "http://ppa.example/ubuntu-lxc/lxc-stable/ubuntu?x=1&y=2"
    text = render_trusty(tmp_path, ppa_url=url)[LXC_PACKAGES]
    assert f"ppa_url={shlex.quote(url)}\n" in text
    assert shlex.quote(url) != url


def test_kernel_is_installed_held_and_asserted(files: dict[str, str]) -> None:
    kernel = files[KERNEL]
    assert "meta=linux-generic-lts-vivid\n" in kernel
    assert 'apt-mark hold "$meta"' in kernel
    assert "GRUB_DEFAULT" in kernel and "update-grub" in kernel
    assert "prefix=3.19\n" in files[ASSERT_KERNEL]


def test_cgm_start_is_the_2015_workaround_as_one_line(tmp_path: Path) -> None:
    start = plan(resolve(trusty_settings(tmp_path)), facts()).fix("cgm").start
    text = start.run
    assert "\n" not in text and text == text.strip()
    assert start.shown == text and start.channel == "admin"
    words = shlex.split(text)
    assert words[:4] == ["sudo", "cgm", "create", "all"]
    assert "chown" in words and "movepid" not in words[:-1]
    assert words[-7:-1] == ["sudo", "-H", "-u", "dbusr", "sh", "-c"]
    assert words[-1] == "cgm movepid all dbusr $$ && exec lxc-start -n mysql55 -d"
    assert '"$(id -u dbusr)" "$(id -g dbusr)"' in text


def test_preseed_is_unattended_vagrant_with_ssh() -> None:
    text = PRESEED.read_text(encoding="utf-8")
    for line in ("d-i passwd/username string vagrant", "d-i passwd/user-password password vagrant",
                 "d-i pkgsel/include string openssh-server", "d-i pkgsel/update-policy select none",
                 "d-i grub-installer/only_debian boolean true"):
        assert line in text
    assert "NOPASSWD:ALL" in text and "/target/etc/sudoers.d/vagrant" in text
    # trusty's grub-installer fails on bootdev "default"
    assert not re.search(r"^d-i grub-installer/bootdev\s+string\s+default", text, re.M)


def test_packer_template_pins_the_iso() -> None:
    text = PACKER_TEMPLATE.read_text(encoding="utf-8")
    assert re.search(r'^\s*default\s*=\s*"https://releases\.ubuntu\.com/14\.04/ubuntu-14\.04\.6-server-amd64\.iso"$',
                     text, re.M)
    assert re.search(rf'^\s*default\s*=\s*"sha256:{ISO_SHA256}"$', text, re.M)
    assert "/trusty-preseed.cfg" in text
    assert 'source "virtualbox-iso" "trusty"' in text and 'source "qemu" "trusty"' in text
    # nothing listens beyond loopback: ssh forward, preseed server, VNC
    assert "hostfwd=tcp:127.0.0.1:${var.ssh_port}-:22" in text
    assert len(re.findall(r'^\s*http_bind_address\s*=\s*"127\.0\.0\.1"$', text, re.M)) == 2
    assert len(re.findall(r'^\s*vnc_bind_address\s*=\s*"127\.0\.0\.1"$', text, re.M)) == 1


# --- rendered scripts against stub commands ------------------------------------------------------

def stub(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_script(script: str, bindir: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(bindir), **(env or {})})


@pytest.mark.integration
@pytest.mark.parametrize(("running", "ok"), [("3.19.0-80-generic", True), ("4.4.0-148-generic", False),
                                             ("3.13.0-170-generic", False), ("3.190.0-1-generic", False)])
def test_assert_kernel_accepts_only_3_19(tmp_path: Path, files: dict[str, str], running: str,
                                         ok: bool) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub(bindir, "uname", f"echo {running}\n")
    result = run_script(files[ASSERT_KERNEL], bindir)
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    if not ok:
        assert f"runs kernel {running}, not 3.19" in result.stderr


LXC_STUBS = {
    "wget": """out=""; url="${@: -1}"
while [ $# -gt 0 ]; do case "$1" in -O) out=$2; shift;; esac; shift; done
case "$url" in
  *ppa.launchpad.net*) [ "${PPA_OK:-0}" = 1 ] || exit 8 ;;
  *keyserver*) [ "${KEY_OK:-0}" = 1 ] || exit 8; echo KEY > "$out" ;;
esac
""",
    "apt-key": """case "$1" in
  add) touch "$STATE/key" ;;
  adv) if [ -e "$STATE/key" ]; then echo "fpr:::::::::93763AC528C8C52568951BE0D5495F657635B973:"; fi ;;
esac
""",
    "add-apt-repository": """[ "${AAR_OK:-0}" = 1 ] || exit 1
touch "$STATE/key"
echo "deb http://ppa.launchpad.net/x trusty main" > "$SLD/ubuntu-lxc-lxc-stable-trusty.list"
""",
    "apt-get": 'echo "apt-get $*" >> "$STATE/apt.log"\n',
    "apt-cache": """PPA=http://ppa.launchpad.net/ubuntu-lxc/lxc-stable/ubuntu
ARCHIVE=http://archive.ubuntu.com/ubuntu
case "$1" in
  madison)
    if [ -e "$SLD/ubuntu-lxc-lxc-stable.list" ]; then
      echo " lxc | 2.0.8-0ubuntu1~ppa | $PPA/ trusty/main amd64 Packages"
    fi
    if [ "${BACKPORTS_OK:-0}" = 1 ]; then
      echo " lxc | 2.0.8-0ubuntu1~14.04.1 | $ARCHIVE/ trusty-backports/main amd64 Packages"
    fi
    echo " lxc | 1.0.10-0ubuntu1.1 | $ARCHIVE/ trusty-updates/main amd64 Packages" ;;
  policy)
    echo "$2:"; echo "  Installed: (none)"
    if [ "$2" = libpam-cgm ] && [ "${NO_PAM_CGM:-0}" = 1 ]; then echo "  Candidate: (none)"
    else echo "  Candidate: 1.0"; fi ;;
esac
""",
    "dpkg-query": 'echo "1.0"\n',
    "lxc-start": "echo 2.0.8\n",
    "cgm": "exit 0\n",
}


@pytest.mark.integration
@pytest.mark.parametrize(("env", "source", "target_flag"), [
    ({"PPA_OK": "1", "AAR_OK": "1"}, "ppa", False),
    ({"PPA_OK": "1", "KEY_OK": "1"}, "ppa", False),
    ({"PPA_OK": "1", "BACKPORTS_OK": "1"}, "backports", True),
    ({"BACKPORTS_OK": "1"}, "backports", True),
    ({"NO_PAM_CGM": "1"}, "stock", False),
])
def test_lxc_packages_picks_and_records_its_source(tmp_path: Path, files: dict[str, str], env: dict[str, str],
                                                   source: str, target_flag: bool) -> None:
    bindir, sld, lab, state = (tmp_path / d for d in ("bin", "sources.list.d", "lab", "state"))
    for d in (bindir, sld, state):
        d.mkdir()
    for name, body in LXC_STUBS.items():
        stub(bindir, name, body)
    script = files[LXC_PACKAGES].replace("/etc/apt/sources.list.d", str(sld))
    script = script.replace("/var/lib/lab", str(lab))
    assert "/etc/apt" not in script and "/var/lib/lab" not in script
    result = run_script(script, bindir, {"STATE": str(state), "SLD": str(sld), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (lab / "lxc-source").read_text() == source + "\n"
    assert f"lxc source: {source}" in result.stdout
    installs = [line for line in (state / "apt.log").read_text().splitlines() if " install " in line]
    main_install = [line for line in installs if " lxc " in f"{line} "]
    assert len(main_install) == 1, installs
    assert ("-t trusty-backports" in main_install[0]) is target_flag
    wanted = [p for p in SEED_PACKAGES if not (p == "libpam-cgm" and env.get("NO_PAM_CGM"))]
    assert main_install[0].split()[-len(wanted):] == wanted
    ppa_list = sld / "ubuntu-lxc-lxc-stable.list"
    if source == "ppa":
        assert ppa_list.read_text() == f"deb {DEFAULT_PPA} trusty main\n"
        assert not list(sld.glob("ubuntu-lxc-lxc-stable-*.list")), "add-apt-repository's own list left behind"
    else:
        assert not ppa_list.exists()
    if env.get("NO_PAM_CGM"):
        assert "libpam-cgm" in result.stderr and "WARNING" in result.stderr
        assert (lab / "lxc-missing").read_text() == "libpam-cgm\n"
    else:
        assert (lab / "lxc-missing").read_text() == ""


# --- (b) shellcheck -------------------------------------------------------------------------------

@pytest.mark.integration
def test_every_rendered_script_passes_shellcheck(tmp_path: Path, written: Path, files: dict[str, str]) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(rel for rel in files if rel.endswith(".sh"))
    assert len(scripts) >= 12
    # the start commands are one line typed by the admin: check them as bash too
    p = plan(resolve(trusty_settings(tmp_path)), facts())
    starts = {f"commands/{t.id}-start.sh": f"#!/bin/bash\n{t.start.run}\n" for t in (p.baseline, *p.fixes)}
    write_files(written, starts)
    scripts += sorted(starts)
    failures = []
    for rel in scripts:
        result = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", str(written / rel)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            failures.append(f"{rel}:\n{result.stdout}{result.stderr}")
    assert not failures, "\n".join(failures)


# --- (c) packer validate --------------------------------------------------------------------------

def packer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("packer") is None:
        pytest.skip("packer is not installed")
    return subprocess.run(["packer", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "CHECKPOINT_DISABLE": "1"})


@pytest.mark.integration
def test_packer_template_validates_with_rendered_scripts(tmp_path: Path, written: Path,
                                                        files: dict[str, str]) -> None:
    scripts = [str(written / rel) for rel in sorted(files) if rel.startswith("provision/")]
    assert len(scripts) == 6
    varfile = tmp_path / "vars.json"
    box = str(tmp_path / "trusty-{{ .Provider }}.box")
    varfile.write_text(json.dumps({"scripts": scripts, "output": box}))
    result = packer("validate", f"-var-file={varfile}", str(PACKER_TEMPLATE), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for only in ("qemu.trusty", "virtualbox-iso.trusty"):
        result = packer("validate", f"-only={only}", f"-var-file={varfile}", str(PACKER_TEMPLATE),
                        cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_packer_validate_rejects_a_missing_script(tmp_path: Path) -> None:
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps({"scripts": [str(tmp_path / "missing.sh")]}))
    result = packer("validate", f"-var-file={varfile}", str(PACKER_TEMPLATE), cwd=tmp_path)
    assert result.returncode != 0
    assert "missing.sh" in result.stdout + result.stderr


@pytest.mark.integration
def test_packer_template_has_both_sources_and_tcg_default(tmp_path: Path) -> None:
    result = packer("inspect", str(PACKER_TEMPLATE), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "virtualbox-iso.trusty" in result.stdout and "qemu.trusty" in result.stdout
    assert 'var.qemu_accelerator: "tcg"' in result.stdout
    assert f'var.iso_checksum: "sha256:{ISO_SHA256}"' in result.stdout


def test_the_ppa_is_followed_by_a_full_upgrade_before_lxc(files: dict[str, str]) -> None:
    """As the 2015 admin did: add the PPA, apt update, apt full-upgrade, then install lxc."""
    text = files[LXC_PACKAGES]
    ppa = text.index("      source=ppa\n")
    upgrade = text.index("full-upgrade", ppa)
    install = text.index('apt-get install -y --no-install-recommends ${apt_target[@]+"${apt_target[@]}"} '
                         '"${install[@]}"')
    assert ppa < upgrade < install


def test_the_vivid_kernel_comes_with_its_recommends(files: dict[str, str]) -> None:
    kernel = files[KERNEL]
    assert re.search(r'apt-get install -y --install-recommends .*"\$meta"', kernel)
