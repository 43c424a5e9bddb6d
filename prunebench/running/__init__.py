"""Training many run requests: the runner (in this process or through an executor), sweeps, executors and
their workers, and what a large-task run needs first (estimate)."""
