"""The ground layer: helpers every service may import (settings tables, tool lookup).

Nothing here imports ``stacks``, ``profiler``, ``aggregator``, ``viewer``,
``render`` or ``flamewatch``; ``tests/test_layers.py`` enforces it.
"""
