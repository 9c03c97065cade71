"""ROS image messages <-> BGR uint8 frames, without ROS (the node passes in the message fields).

`decode_raw(encoding, height, width, step, data, is_bigendian)` turns a sensor_msgs/Image's fields into an
H x W x 3 BGR uint8 array; `decode_compressed(format, data)` does the same for a sensor_msgs/CompressedImage
(JPEG or PNG, as image_transport's `compressed` plugin sends them). Both check the message against itself
first (size, step, data length, header dimensions) and raise `ImageDecodeError` with a one-line reason on
anything malformed, so a broken publisher can never crash the node or make it allocate gigabytes: an image
larger than `max_pixels` (the node's max_image_pixels) raises `ImageTooLarge` from its declared size alone.
`encode_raw(frame)` gives the fields of a bgr8 sensor_msgs/Image (the node's debug image).

Supported raw encodings (names as in sensor_msgs/image_encodings.hpp):
  rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3, 8UC4 (8UC3/8UC4 read as BGR/BGRA, like cv_bridge),
  mono16, 16UC1 (scaled to 8 bit), yuv422 / uyvy (UYVY order), yuv422_yuy2 / yuyv (YUYV order, what
  v4l2_camera and most USB webcams send).

Runs on Python 3.8 (JetPack 4.6 containers).
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from agegender_ros.image_header import declared_size

# Largest frame accepted by default (the node's max_image_pixels, `agegender bag --max-image-pixels`): 8K UHD,
# 7680 x 4320 = 33.2 Mpx, the largest video camera frame. Anything larger is refused from its declared size.
MAX_PIXELS = 7680 * 4320
MAX_SIDE = 65535  # JPEG's own limit

# encoding -> (channels, bytes per channel, conversion to BGR: a cv2.COLOR_* code, None = none needed)
_RAW_ENCODINGS = {
    "bgr8": (3, 1, None),
    "8UC3": (3, 1, None),
    "rgb8": (3, 1, cv2.COLOR_RGB2BGR),
    "bgra8": (4, 1, cv2.COLOR_BGRA2BGR),
    "8UC4": (4, 1, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, 1, cv2.COLOR_RGBA2BGR),
    "mono8": (1, 1, cv2.COLOR_GRAY2BGR),
    "8UC1": (1, 1, cv2.COLOR_GRAY2BGR),
    "mono16": (1, 2, cv2.COLOR_GRAY2BGR),
    "16UC1": (1, 2, cv2.COLOR_GRAY2BGR),
    # Packed 4:2:2, two bytes per pixel.
    "yuv422": (2, 1, cv2.COLOR_YUV2BGR_UYVY),
    "uyvy": (2, 1, cv2.COLOR_YUV2BGR_UYVY),
    "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2BGR_YUYV),
    "yuyv": (2, 1, cv2.COLOR_YUV2BGR_YUYV),
}
SUPPORTED_ENCODINGS = tuple(_RAW_ENCODINGS)
_YUV422 = {"yuv422", "uyvy", "yuv422_yuy2", "yuyv"}


class ImageDecodeError(ValueError):
    """A malformed or unsupported image message; str() is a one-line reason fit for a log."""


class RawImage(NamedTuple):
    """The fields of a sensor_msgs/Image (without the header)."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes
    is_bigendian: bool = False


class ImageTooLarge(ImageDecodeError):
    """An image larger than the pixels accepted (max_image_pixels), refused from its declared size: nothing was
    decoded or allocated."""


def check_image_size(height: int, width: int, max_pixels: int = MAX_PIXELS) -> None:
    """Raise ImageDecodeError for an empty size, ImageTooLarge for more than `max_pixels` (or a side over
    MAX_SIDE)."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    if height * width > max_pixels or height > MAX_SIDE or width > MAX_SIDE:
        raise ImageTooLarge(f"image {width}x{height} ({width * height:,} pixels) is larger than max_image_pixels "
                            f"{max_pixels:,}: refused without decoding it (raise max_image_pixels to accept it)")


_check_size = check_image_size


def decode_raw(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """BGR uint8 H x W x 3 array from a sensor_msgs/Image's fields.

    `data` is anything with the buffer protocol (bytes, the message's array.array('B'), a NumPy array). For
    bgr8 / 8UC3 without row padding the result is a read-only view of `data`, not a copy.
    Raises ImageDecodeError for an unknown encoding, a zero or absurd size, a step shorter than a row, data
    shorter than step x height, or an odd width with a 4:2:2 encoding.
    """
    spec = _RAW_ENCODINGS.get(encoding)
    if spec is None:
        shown = encoding if len(encoding) <= 40 else encoding[:40] + "..."
        raise ImageDecodeError(f"unsupported encoding {shown!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    channels, depth, conversion = spec
    height, width, step = int(height), int(width), int(step)
    _check_size(height, width, max_pixels)
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is shorter than one row of {width} {encoding} pixels ({row_bytes} bytes)")
    if encoding in _YUV422 and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width, got {width}")
    try:
        buffer = np.frombuffer(data, np.uint8)
    except (TypeError, ValueError) as error:
        raise ImageDecodeError(f"image data is not a byte buffer ({type(data).__name__})") from error
    needed = step * (height - 1) + row_bytes
    if buffer.size < needed:
        raise ImageDecodeError(f"data has {buffer.size} bytes, {width}x{height} {encoding} with step {step} "
                               f"needs {step * height}")
    # Rows of `step` bytes (the last row may lack its padding), each cut to its pixels.
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1), writeable=False)
    if depth == 2:
        # 16-bit grey: keep the high byte (little- or big-endian as the message says).
        pixels = rows.reshape(height, width, 2)[:, :, 0 if is_bigendian else 1]
        return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)
    image = rows.reshape(height, width, channels) if channels > 1 else rows
    if conversion is None:
        return image if image.flags.c_contiguous else np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), conversion)


def _compressed_size(data: memoryview) -> tuple[str, int, int] | None:
    """(kind, width, height) read from a JPEG's SOF or a PNG's IHDR header, or None when not found."""
    header = declared_size(data)
    return header if header is not None and header[0] in ("jpeg", "png") else None


def decode_compressed(fmt: str, data, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """BGR uint8 H x W x 3 array from a sensor_msgs/CompressedImage's `format` and `data` (JPEG or PNG).

    The format string is only checked for what cannot work (`compressedDepth`, 16-bit depth PNGs); the bytes
    themselves decide JPEG vs PNG. The frame size is read from the file header before decoding, so a header
    claiming a gigapixel image is refused without allocating it.
    """
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageDecodeError(f"format {fmt[:60]!r} is a depth image, not a camera image")
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as error:
        raise ImageDecodeError(f"compressed data is not a byte buffer ({type(data).__name__})") from error
    if not len(view):
        raise ImageDecodeError("compressed image has no data")
    header = _compressed_size(view)
    if header is None:
        kind = "JPEG" if bytes(view[:2]) == b"\xff\xd8" else "PNG" if bytes(view[:4]) == b"\x89PNG" else None
        if kind:
            raise ImageDecodeError(f"corrupt {kind}: no readable frame header")
        raise ImageDecodeError(f"compressed data ({fmt[:40]!r}, {len(view)} bytes) is neither JPEG nor PNG")
    kind, width, height = header
    _check_size(height, width, max_pixels)
    buffer = np.frombuffer(view, np.uint8)
    # Camera frames are used as sent: no EXIF rotation (as cv_bridge does).
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageDecodeError(f"corrupt {kind.upper()} ({len(buffer)} bytes, header says {width}x{height})")
    if image.shape[:2] != (height, width):
        raise ImageDecodeError(f"corrupt {kind.upper()}: decoded {image.shape[1]}x{image.shape[0]}, header says "
                               f"{width}x{height}")
    return image


def encode_raw(frame_bgr: np.ndarray) -> RawImage:
    """The fields of a bgr8 sensor_msgs/Image holding this frame (rows unpadded, little-endian)."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 BGR frame, got {frame_bgr.dtype} {frame_bgr.shape}")
    height, width = frame_bgr.shape[:2]
    return RawImage("bgr8", height, width, width * 3, np.ascontiguousarray(frame_bgr).tobytes(), False)


def encode_frame(frame_bgr: np.ndarray, encoding: str) -> RawImage:
    """A BGR frame as the fields of a sensor_msgs/Image in `encoding` (for publishers in tests and tools)."""
    conversions = {
        "bgr8": None, "8UC3": None, "rgb8": cv2.COLOR_BGR2RGB, "bgra8": cv2.COLOR_BGR2BGRA,
        "rgba8": cv2.COLOR_BGR2RGBA, "mono8": cv2.COLOR_BGR2GRAY, "8UC1": cv2.COLOR_BGR2GRAY,
    }
    height, width = frame_bgr.shape[:2]
    if encoding in conversions:
        code = conversions[encoding]
        pixels = frame_bgr if code is None else cv2.cvtColor(frame_bgr, code)
    elif encoding in ("mono16", "16UC1"):
        pixels = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY).astype("<u2") * 257
    elif encoding in _YUV422:
        if width % 2:
            raise ValueError(f"{encoding} needs an even width")
        # BT.601 video range, the inverse of OpenCV's YUV2BGR_UYVY / _YUYV (what camera drivers send).
        b, g, r = (frame_bgr[:, :, i].astype(np.float32) for i in range(3))
        y = np.clip(16 + 0.257 * r + 0.504 * g + 0.098 * b + 0.5, 0, 255).astype(np.uint8)
        u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
        v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
        u2 = np.clip((u[:, 0::2] + u[:, 1::2]) / 2 + 0.5, 0, 255).astype(np.uint8)
        v2 = np.clip((v[:, 0::2] + v[:, 1::2]) / 2 + 0.5, 0, 255).astype(np.uint8)
        packed = np.empty((height, width * 2), np.uint8)
        if encoding in ("yuv422", "uyvy"):
            packed[:, 0::4], packed[:, 1::2], packed[:, 2::4] = u2, y, v2
        else:
            packed[:, 1::4], packed[:, 0::2], packed[:, 3::4] = u2, y, v2
        pixels = packed
    else:
        raise ValueError(f"cannot encode to {encoding!r}")
    data = np.ascontiguousarray(pixels).tobytes()
    return RawImage(encoding, height, width, len(data) // height, data, False)
