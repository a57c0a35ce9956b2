"""The webhook gateway: lakeFS's pre-merge check, and lakeFS and Grafana events relayed to
Prefect through a durable spool."""
