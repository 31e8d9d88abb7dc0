"""The pure core of flamewatch: stacks, profiles, parsers, trees and diffs.

Nothing in this package performs I/O, reads the clock or touches the network.
"""

from stacks.model import Frame, Kind, Labels, Profile, StackTable, combine, merge

__all__ = ["Frame", "Kind", "Labels", "Profile", "StackTable", "combine", "merge"]
