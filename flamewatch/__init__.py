"""flamewatch: always-on profiling for Kubernetes clusters."""

__version__ = "0.1.0"
