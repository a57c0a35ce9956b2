"""lakeloop: an event-driven MLOps loop on lakeFS, Prefect, MLflow and Litestar."""

__version__ = "0.1.0"
