"""Deployable pipelines: the entrypoints named in ``deployments/prefect.yaml``."""
