"""skyfed: federated ingestion and processing across regional Google Cloud projects."""

__version__ = "0.1.0"
