"""Tiny image toolkit for the tinyhats demo: procedural hats, alpha compositing, PNG.

The work here is real (pixel-by-pixel alpha blending in Python, zlib-compressed
PNG), so a CPU profiler sees it as it would see an image service. It is kept
deliberately simple and pure-Python in ``overlayHat`` so the frames that burn
the CPU have readable names in the flamegraph.
"""

from __future__ import annotations

import struct
import zlib

# RGBA pixels, row-major, one bytearray per image; width/height travel alongside.
Image = tuple[int, int, bytearray]

HAT_STYLES = ("tophat", "beanie", "cowboy", "crown", "party", "beret", "fedora", "sombrero")


def make_photo(width: int, height: int, seed: int = 0) -> Image:
    """A deterministic 'cat photo': a soft gradient with a round face in the middle."""
    px = bytearray(width * height * 4)
    cx, cy, r2 = width // 2, height * 3 // 5, (min(width, height) * 2 // 5) ** 2
    for y in range(height):
        for x in range(width):
            i = (y * width + x) * 4
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r2
            px[i] = 200 if inside else (x * 255 // width + seed * 37) % 256
            px[i + 1] = 150 if inside else (y * 255 // height + seed * 11) % 256
            px[i + 2] = 90 if inside else 180
            px[i + 3] = 255
    return width, height, px


def make_hat(style: str, width: int, height: int) -> Image:
    """A hat sprite with an alpha channel; the shape depends on the style's name."""
    seed = sum(map(ord, style))
    colour = (seed * 53 % 256, seed * 97 % 256, seed * 193 % 256)
    brim = height * 3 // 4
    crown_half = width * (2 + seed % 3) // 10
    px = bytearray(width * height * 4)
    for y in range(height):
        for x in range(width):
            i = (y * width + x) * 4
            on_brim = y >= brim
            on_crown = abs(x - width // 2) <= crown_half and y >= height // 6
            if on_brim or on_crown:
                px[i], px[i + 1], px[i + 2] = colour
                px[i + 3] = 255 if on_crown else 200
    return width, height, px


def scaleHat(hat: Image, width: int, height: int) -> Image:
    """Nearest-neighbour resize."""
    hw, hh, src = hat
    out = bytearray(width * height * 4)
    for y in range(height):
        sy = y * hh // height
        for x in range(width):
            s = (sy * hw + x * hw // width) * 4
            d = (y * width + x) * 4
            out[d : d + 4] = src[s : s + 4]
    return width, height, out


def overlayHat(photo: Image, hat: Image, left: int, top: int) -> Image:
    """Alpha-blend ``hat`` onto a copy of ``photo`` at (left, top); the CPU-heavy step."""
    pw, ph, base = photo
    hw, hh, sprite = hat
    out = bytearray(base)
    for y in range(hh):
        py = top + y
        if py < 0 or py >= ph:
            continue
        for x in range(hw):
            px = left + x
            if px < 0 or px >= pw:
                continue
            s = (y * hw + x) * 4
            a = sprite[s + 3]
            if a == 0:
                continue
            d = (py * pw + px) * 4
            for c in range(3):
                out[d + c] = (sprite[s + c] * a + out[d + c] * (255 - a)) // 255
    return pw, ph, out


def encodePng(img: Image) -> bytes:
    """A valid RGBA PNG (filter 0 on every row, zlib level 6)."""
    w, h, px = img
    raw = b"".join(b"\x00" + bytes(px[y * w * 4 : (y + 1) * w * 4]) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def decodePng(data: bytes) -> Image:
    """Decode the PNGs :func:`encodePng` writes (RGBA, 8 bit, filter 0). Raises ValueError otherwise."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG (bad signature)")
    pos, w, h, idat = 8, 0, 0, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            if (depth, ctype) != (8, 6):
                raise ValueError(f"unsupported PNG: bit depth {depth}, colour type {ctype} (need 8, 6)")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * 4 + 1
    px = bytearray()
    for y in range(h):
        if raw[y * stride] != 0:
            raise ValueError(f"unsupported PNG row filter {raw[y * stride]} on row {y}")
        px += raw[y * stride + 1 : (y + 1) * stride]
    return w, h, px


def thumbnail(img: Image, factor: int) -> Image:
    """Downscale by an integer factor, averaging each block (the admin page's previews)."""
    w, h, px = img
    tw, th = w // factor, h // factor
    out = bytearray(tw * th * 4)
    n = factor * factor
    for ty in range(th):
        for tx in range(tw):
            acc = [0, 0, 0, 0]
            for dy in range(factor):
                row = ((ty * factor + dy) * w + tx * factor) * 4
                for dx in range(factor):
                    s = row + dx * 4
                    acc[0] += px[s]
                    acc[1] += px[s + 1]
                    acc[2] += px[s + 2]
                    acc[3] += px[s + 3]
            d = (ty * tw + tx) * 4
            out[d : d + 4] = bytes(v // n for v in acc)
    return tw, th, out
