"""cgroup-lab: a scenario (a bug, as data) on a target (a release) gives a lab (one VM).

Packages in pipeline order, each importing only what lies below it: core, config, host, render,
images, remote, machine, run, report; cli on top (the tasks, run by invoke in a checkout and by the
installed `cgroup-lab` command). The project's own files (scenarios, templates) are in data/."""

import logging

# python-vagrant logs a warning at import when vagrant is missing; our own checks say it better.
logging.getLogger("vagrant").addHandler(logging.NullHandler())
