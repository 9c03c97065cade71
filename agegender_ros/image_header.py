"""The width and height an image file declares in its header, read before anything is decoded.

A 16000 x 16000 PNG of 730 KB decodes to 768 MB (and OpenCV held 1.8 GB doing it): every image reader of the
package (the node's CompressedImage input, `agegender bag`, `agegender predict`, the training cache) checks the
declared size against its limit first and refuses a larger image without decoding it.

`declared_size(data)` -> (kind, width, height) or None, for JPEG, PNG, BMP, WebP (lossy, lossless, extended),
TIFF (both byte orders) and PNM (PBM/PGM/PPM, binary and ASCII). Pure Python, no dependencies; Python 3.8.
"""
from __future__ import annotations

import struct

def declared_size(data) -> tuple[str, int, int] | None:
    """(kind, width, height) from the header of an image file's bytes (anything with the buffer protocol), or
    None when the header is missing, cut short or of another format."""
    view = memoryview(data).cast("B")
    head = bytes(view[:32])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(head)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(view)
        if head.startswith(b"BM"):
            return _bmp(head)
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(view)
        if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
            return _pnm(bytes(view[:1024]))
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(head: bytes):
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return "png", width, height


def _jpeg(view: memoryview):
    i, n = 2, len(view)
    while i + 4 <= n:
        if view[i] != 0xFF:
            return None
        marker = view[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        length = int.from_bytes(view[i + 2:i + 4], "big")
        if length < 2:
            return None
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height = int.from_bytes(view[i + 5:i + 7], "big")
            width = int.from_bytes(view[i + 7:i + 9], "big")
            return "jpeg", width, height
        if marker == 0xDA:  # start of scan before any SOF
            return None
        i += 2 + length
    return None


def _bmp(head: bytes):
    if len(head) < 26:
        return None
    header_size = struct.unpack("<I", head[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
    return "bmp", abs(width), abs(height)  # a negative height is a top-down bitmap


def _webp(head: bytes):
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:  # lossy: key frame start code, then 14-bit sizes
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", head[26:30])
        return "webp", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:  # lossless: 14-bit sizes minus one, packed
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:  # extended: 24-bit canvas sizes minus one
        return "webp", int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _tiff(view: memoryview):
    order = "<" if bytes(view[:2]) == b"II" else ">"
    offset = struct.unpack(order + "I", bytes(view[4:8]))[0]
    count = struct.unpack(order + "H", bytes(view[offset:offset + 2]))[0]
    sizes = {}
    for k in range(count):
        entry = bytes(view[offset + 2 + 12 * k:offset + 14 + 12 * k])
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4), stored in the entry itself
            value = struct.unpack(order + "H", entry[8:10])[0] if kind == 3 else \
                struct.unpack(order + "I", entry[8:12])[0]
            sizes[tag] = value
    if 256 in sizes and 257 in sizes:
        return "tiff", sizes[256], sizes[257]
    return None


def _pnm(head: bytes):
    fields, tokens = head[2:].split(b"\n"), []
    for line in fields:
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return "pnm", int(tokens[0]), int(tokens[1])
    return None
