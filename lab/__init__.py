"""Reproduce the 2015 sudo/lxc cgroup-inheritance bug in a disposable VM.

The pipeline: settings -> render -> build -> up -> verify -> report.
"""

import logging

# python-vagrant logs a warning at import when vagrant is missing; our own checks say it better.
logging.getLogger("vagrant").addHandler(logging.NullHandler())
