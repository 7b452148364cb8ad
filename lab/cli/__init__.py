"""The command line: the tasks (tasks.py) and the installed `cgroup-lab` program (main.py)."""
