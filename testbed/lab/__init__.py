"""The network-namespace lab (see topology.py for its shape and lab.py for its API)."""

from testbed.lab.lab import Lab, LabError, LabNode, down_all

__all__ = ["Lab", "LabError", "LabNode", "down_all"]
