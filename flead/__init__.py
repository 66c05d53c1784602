"""FLEAD: federated, online anomaly detection on IoT sensor streams (framework-free core)."""

__version__ = "0.1.0"
