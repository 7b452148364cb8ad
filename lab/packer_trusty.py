"""Build the trusty box with Packer from the Ubuntu 14.04.6 server ISO (packer/trusty.pkr.hcl).

Packer provisions the kernel stage only (apt sources, the vivid kernel); the lab stage runs under
Vagrant after the reboot into 3.19, where lab.up asserts the kernel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab import accel, console, proc, render
from lab.build import free_port, vagrant_insecure_keys
from lab.paths import PROJECT_DIR
from lab.settings import Settings


def packer_source(provider: str) -> str:
    return "virtualbox-iso.trusty" if provider == "virtualbox" else "qemu.trusty"


def build_trusty(settings: Settings, work: Path, verbose: bool) -> Path:
    from lab.lifecycle import resolve_provider

    provider = resolve_provider(settings)
    target = settings.target_data
    facts = render.LabFacts(provider=provider, libvirt_driver=accel.libvirt_driver(), box_name="", box_url="",
                            public_key="", network_octet=render.default_network_octet(settings.name))
    ctx = render.context(settings, facts)
    kernel_stage = target.provision[0]
    scripts = []
    for i, template in enumerate(kernel_stage.scripts, start=1):
        path = work / f"{i:02d}-{Path(template).name}"
        path.write_text(render.environment().get_template(f"{template}.j2").render(ctx), encoding="utf-8")
        path.chmod(0o755)
        scripts.append(str(path))
    _, public = vagrant_insecure_keys()
    box = work / f"trusty-{provider}.box"
    variables = {"scripts": scripts, "iso_url": settings.iso_url,
                 "qemu_accelerator": accel.packer_accelerator(), "cpus": settings.cpus,
                 "memory": settings.memory, "http_directory": str(PROJECT_DIR / "packer" / "http"),
                 "ssh_port": free_port(), "vagrant_public_key": public.read_text().strip(),
                 "output_directory": str(work / "packer-out"), "output": str(box)}
    var_file = work / "vars.json"
    var_file.write_text(json.dumps(variables, indent=1))
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    with console.step(f"packer build {packer_source(provider)} from the Ubuntu 14.04.6 ISO",
                      "the ISO download, the unattended install and the kernel stage (tens of minutes)",
                      verbose) as out:
        proc.run(["packer", "build", "-color=false", f"-only={packer_source(provider)}", "-var-file", str(var_file),
                  str(PROJECT_DIR / "packer" / "trusty.pkr.hcl")], step="packer build", timeout=settings.build_timeout,
                 waiting_for="packer", env=env, cwd=work, on_line=out)
    return box
