"""The Dagster definitions by kind: ``assets`` (by stage), ``resources``, ``jobs``, ``sensors``,
``schedules``, and the ``partitions`` read when they load. `flead_dagster.definitions` assembles them."""
