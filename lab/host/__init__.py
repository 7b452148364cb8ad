"""The host: running processes, tools and install hints, the accelerator probe, libvirt, probes."""
