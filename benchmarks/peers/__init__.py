"""The comparison with the peers by real training: the task, one adapter per method, the report."""
