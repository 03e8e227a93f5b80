"""Observability: Prometheus metrics (and their exposition across workers), JSON logs, the status page data."""
