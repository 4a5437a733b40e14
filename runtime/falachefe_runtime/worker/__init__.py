"""The BullMQ worker wrapper: routing jobs to handlers, metrics, permanent failures, shutdown."""
