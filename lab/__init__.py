"""cgroup-lab: a scenario (a bug, as data) on a target (a release) gives a lab (one VM).

Packages in pipeline order, each importing only what lies below it: core, config, host, render,
images, remote, machine, run, report. tasks.py is the thin invoke shell on top."""

import logging

# python-vagrant logs a warning at import when vagrant is missing; our own checks say it better.
logging.getLogger("vagrant").addHandler(logging.NullHandler())
