"""The network-namespace lab (see topology.py for its shape and lab.py for its API)."""

from tests.e2e.lab.lab import Lab, LabError, LabNode, down_all

__all__ = ["Lab", "LabError", "LabNode", "down_all"]
