"""Catalog sync to external registries (Consul, Kubernetes); see base.py for the model."""
