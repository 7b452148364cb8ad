"""Reproduce the 2015 sudo/lxc cgroup-inheritance bug in a disposable VM.

The pipeline: settings -> render -> build -> up -> verify -> report.
"""
