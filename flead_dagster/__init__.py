"""Dagster definitions for FLEAD: thin wrappers over the `flead` core library."""
