"""The real validators on the rendered output: vagrant validate, packer validate, shellcheck.

VirtualBox cannot run here, so its provider block is checked only through
`vagrant validate --ignore-provider` (Vagrant's own limit); libvirt's block is validated for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from labtest import make_facts, make_settings

from lab.core.files import write_files
from lab.machine.resolve import resolve
from lab.render.lab import render_all
from lab.render.plan import plan

pytestmark = pytest.mark.integration

TARGETS = ["trusty", "bookworm", "bookworm-unified"]


def rendered(tmp_path: Path, target: str, provider: str = "libvirt") -> Path:
    s = make_settings(tmp_path, target=target)
    out = tmp_path / target
    facts = make_facts(provider=provider)
    write_files(out, {**render_all(resolve(s), facts), **plan(resolve(s), facts).scripts})  # what lab.render writes
    return out


def vagrant_validate(where: Path, *extra: str, provider: str = "libvirt") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": provider, "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(["vagrant", "validate", *extra], cwd=where, env=env, capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.fixture(scope="module", autouse=True)
def need_tools() -> None:
    missing = [t for t in ("vagrant", "packer", "shellcheck") if not shutil.which(t)]
    if missing:
        pytest.fail(f"integration tools missing: {missing}; run ./setup.sh --tests")


@pytest.mark.parametrize("target", TARGETS)
def test_vagrant_validate_libvirt(tmp_path: Path, target: str) -> None:
    out = rendered(tmp_path, target)
    result = vagrant_validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_vagrant_validate_ignore_provider(tmp_path: Path, target: str) -> None:
    out = rendered(tmp_path, target, provider="virtualbox")
    result = vagrant_validate(out, "--ignore-provider", provider="virtualbox")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vagrant_validate_catches_a_bad_libvirt_option(tmp_path: Path) -> None:
    out = rendered(tmp_path, "bookworm")
    vf = out / "Vagrantfile"
    vf.write_text(vf.read_text().replace("lv.cpus =", "lv.cpuz ="))
    result = vagrant_validate(out)
    assert result.returncode != 0
    assert "cpuz" in result.stdout + result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_shellcheck_every_rendered_script(tmp_path: Path, target: str) -> None:
    out = rendered(tmp_path, target)
    scripts = sorted(str(p) for p in out.rglob("*.sh"))
    assert len(scripts) >= 8
    result = subprocess.run(["shellcheck", "-s", "bash", *scripts], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_shellcheck_image_scripts(tmp_path: Path) -> None:
    """The base image's mmdebstrap hook (bash), the identity handover and the layer's preparation
    (POSIX sh, run by the guest agent) as they are rendered for a real target and scenario."""
    from lab.images import base, identity, layer

    s = make_settings(tmp_path, target="bookworm")
    files = {"rootfs.sh": "#!/bin/bash\n" + base.hook_script(s.target_data),
             "identity.sh": "#!/bin/sh\n" + identity.script(identity.Identity("lab-x", "ssh-ed25519 AAAA k",
                                                                               "192.168.5.2", "192.168.5.1", True)),
             "prepare.sh": "#!/bin/sh\n" + layer._prepare_script(("labadmin", "other"))}
    write_files(tmp_path, files)
    result = subprocess.run(["shellcheck", *(str(tmp_path / f) for f in files)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout


