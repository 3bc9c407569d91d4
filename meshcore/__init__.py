"""Shared library of the mesh: names, typed errors, clock, config and wire helpers."""

__version__ = "0.1.0"
