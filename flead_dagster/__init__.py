"""Dagster definitions for FLEAD: thin wrappers over the `flead` core library."""

import warnings

# `backfill_policy` (one run per backfilled range) is beta in Dagster 1.13; FLEAD relies on it knowingly.
# Matched by its message, so that importing this package (the `flead` command line does) loads no Dagster.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`")
