"""The flamewatch web viewer: static page, canvas flamegraph, and the aiohttp routes serving them."""
