"""Dagster definitions for FLEAD: thin wrappers over the `flead` core library."""

import warnings

from dagster import BetaWarning

# `backfill_policy` (one run per backfilled range) is beta in Dagster 1.13; FLEAD relies on it knowingly.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)
