"""Build the trusty box with Packer from the Ubuntu 14.04.6 server ISO (packer/trusty.pkr.hcl).

Packer provisions the kernel stage only (apt sources, the vivid kernel); the lab stage runs under
Vagrant after the reboot into 3.19, where lab.up asserts the kernel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab.config.resolved import Lab
from lab.core import console
from lab.core.resources import packer_file
from lab.host import accel, proc
from lab.images.common import free_port, vagrant_insecure_keys
from lab.render.lab import LabFacts, default_network_octet, provision_plan, render_script


def packer_source(provider: str) -> str:
    """The Packer source of packer/trusty.pkr.hcl that builds for provider: "virtualbox-iso.trusty" for
    virtualbox, "qemu.trusty" for any other (libvirt)."""
    return "virtualbox-iso.trusty" if provider == "virtualbox" else "qemu.trusty"


def kernel_stage_scripts(lab: Lab) -> list[tuple[str, str]]:
    """[(file name, rendered text)] of the kernel stage Packer runs into the trusty box, in order."""
    provider = lab.provider
    facts = LabFacts(provider=provider, libvirt_driver="qemu", box_name="", box_url="",
                     public_key="", network_octet=default_network_octet(lab.name))
    _, _, kernel_stage = provision_plan(lab)[0]
    return [(f"{i:02d}-{Path(script.name).name.split('-', 2)[-1]}", render_script(lab, facts, script))
            for i, script in enumerate(kernel_stage, start=1)]


def build_trusty(lab: Lab, work: Path, verbose: bool) -> Path:
    """Run `packer build` of the trusty box in work (a scratch folder: the kernel stage's scripts,
    vars.json, Packer's output), bounded by the build_timeout setting (seconds); returns the box file,
    <work>/trusty-<provider>.box. Raises ToolMissing without packer, TestbedError (exit 3) when Packer
    fails or times out. verbose: show Packer's lines as they come."""
    provider = lab.provider
    scripts = []
    for name, text in kernel_stage_scripts(lab):
        path = work / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
        scripts.append(str(path))
    _, public = vagrant_insecure_keys()
    box = work / f"trusty-{provider}.box"
    variables = {"scripts": scripts, "iso_url": lab.iso_url,
                 "qemu_accelerator": accel.packer_accelerator(), "cpus": lab.cpus,
                 "memory": lab.memory, "http_directory": str(packer_file("http")),
                 "ssh_port": free_port(), "vagrant_public_key": public.read_text().strip(),
                 "output_directory": str(work / "packer-out"), "output": str(box)}
    var_file = work / "vars.json"
    var_file.write_text(json.dumps(variables, indent=1))
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    with console.step(f"packer build {packer_source(provider)} from the Ubuntu 14.04.6 ISO",
                      "the ISO download, the unattended install and the kernel stage (tens of minutes)",
                      verbose) as out:
        proc.run(["packer", "build", "-color=false", f"-only={packer_source(provider)}", "-var-file", str(var_file),
                  str(packer_file("trusty.pkr.hcl"))], step="packer build", timeout=lab.build_timeout,
                 waiting_for="packer", env=env, cwd=work, on_line=out)
    return box
