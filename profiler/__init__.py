"""The flamewatch host agent: discover -> sample -> label -> ship."""
