"""The machine: the Vagrant wrapper, the lab's lifecycle state and its verbs, the doctor."""
