"""What a worker tells the outside world: JSON logs, Prometheus metrics, health endpoints."""
