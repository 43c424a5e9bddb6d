"""An example prunebench plugin: the method `random` and the task `mnist-mlp` (see README.md)."""
