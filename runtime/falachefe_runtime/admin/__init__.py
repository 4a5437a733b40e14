"""The admin worker: background housekeeping jobs on ``admin-tasks``, scheduled once for all replicas."""
