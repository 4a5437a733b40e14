"""The autoscaler: decision, readers, engine, end to end."""
