"""The global model API: a thin FastAPI shell (``app``, ``routers/``, ``auth``, ``errors``, ``limits``,
``metrics``, the dashboard) over framework-free parts (``service``, ``registry``, ``update_store``,
``aggregation``, ``submission``, ``keys``, ``runtime_config``, ``monitoring``, ``codec``) that the
``flead api`` command line uses directly. ``create_app`` lives in ``services.global_api.app``."""
