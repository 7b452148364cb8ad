"""The remote side: the SSH connection, persistent shells, the lab's keys."""
