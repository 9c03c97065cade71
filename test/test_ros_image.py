"""ROS-free image conversion (agegender_ros.ros_image): every supported encoding, row padding, compressed
images, and a clear ImageDecodeError for each kind of malformed message."""
from __future__ import annotations

import array
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender_ros.ros_image import MAX_PIXELS, SUPPORTED_ENCODINGS, ImageDecodeError, decode_compressed, \
    decode_raw, encode_frame, encode_raw

SAMPLE = Path(__file__).resolve().parents[1] / "agegender_ros" / "samples" / "astronaut.jpg"


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    image = cv2.imread(str(SAMPLE))
    assert image is not None
    return image[100:220, 150:310].copy()  # 160 x 120, even width


def _decode(raw, **kw):
    return decode_raw(raw.encoding, raw.height, raw.width, raw.step, raw.data, raw.is_bigendian, **kw)


@pytest.mark.parametrize("encoding,tolerance", [
    ("bgr8", 0), ("8UC3", 0), ("rgb8", 0), ("bgra8", 0), ("rgba8", 0),
    ("yuv422", 3), ("uyvy", 3), ("yuv422_yuy2", 3), ("yuyv", 3),
])
def test_colour_encodings_round_trip(frame, encoding, tolerance):
    raw = encode_frame(frame, encoding)
    out = _decode(raw)
    assert out.shape == frame.shape and out.dtype == np.uint8
    # 4:2:2 shares chroma between pixel pairs: compare the mean error, not every pixel.
    assert np.abs(out.astype(int) - frame).mean() <= tolerance


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
def test_grey_encodings_give_grey_bgr(frame, encoding):
    out = _decode(encode_frame(frame, encoding))
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert out.shape == frame.shape
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert np.abs(out[:, :, 0].astype(int) - grey).max() <= 1


def test_mono16_big_endian(frame):
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    data = (grey.astype(">u2") * 257).tobytes()
    h, w = grey.shape
    out = decode_raw("mono16", h, w, w * 2, data, is_bigendian=True)
    assert np.abs(out[:, :, 0].astype(int) - grey).max() <= 1


def test_every_supported_encoding_is_tested():
    assert set(SUPPORTED_ENCODINGS) == {"bgr8", "8UC3", "rgb8", "bgra8", "8UC4", "rgba8", "mono8", "8UC1",
                                        "mono16", "16UC1", "yuv422", "uyvy", "yuv422_yuy2", "yuyv"}
    bgra = cv2.cvtColor(np.zeros((2, 2, 3), np.uint8), cv2.COLOR_BGR2BGRA)
    assert decode_raw("8UC4", 2, 2, 8, bgra.tobytes()).shape == (2, 2, 3)


def test_row_padding_and_message_array(frame):
    """step > width * bpp (padded rows, e.g. 4-byte aligned), data as the message's array('B')."""
    h, w = frame.shape[:2]
    step = w * 3 + 13
    padded = np.zeros((h, step), np.uint8)
    padded[:, : w * 3] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).reshape(h, -1)
    out = decode_raw("rgb8", h, w, step, array.array("B", padded.tobytes()))
    assert np.array_equal(out, frame)
    # The last row may lack its padding.
    out = decode_raw("rgb8", h, w, step, padded.tobytes()[:-13])
    assert np.array_equal(out, frame)


def test_bgr8_is_a_view_without_copy(frame):
    raw = encode_raw(frame)
    assert (raw.encoding, raw.height, raw.width, raw.step) == ("bgr8", frame.shape[0], frame.shape[1],
                                                               frame.shape[1] * 3)
    out = _decode(raw)
    assert np.array_equal(out, frame)
    assert not out.flags.writeable  # a view of the message buffer
    assert out.base is not None


def test_extra_trailing_data_is_ignored(frame):
    raw = encode_frame(frame, "bgr8")
    assert np.array_equal(decode_raw("bgr8", raw.height, raw.width, raw.step, raw.data + b"\0" * 100), frame)


@pytest.mark.parametrize("fields,reason", [
    (("bgr8", 120, 160, 479, 120 * 480), "shorter than one row"),  # step < width * 3
    (("bgr8", 120, 160, 480 * 2, 120 * 480 * 2 - 481 - 480), "needs"),  # truncated
    (("rgb8", 120, 160, 480, 100), "needs"),  # truncated badly
    (("bgr8", 0, 160, 480, 0), "empty image"),
    (("bgr8", 120, 0, 0, 0), "empty image"),
    (("bgr8", 100000, 100000, 300000, 1000), "larger than"),
    (("mono8", 1, 70000, 70000, 70000), "larger than"),  # a side longer than JPEG allows
    (("bayer_rggb8", 120, 160, 160, 120 * 160), "unsupported encoding"),
    (("", 120, 160, 480, 120 * 480), "unsupported encoding"),
    (("32FC1", 120, 160, 640, 120 * 640), "unsupported encoding"),
    (("yuyv", 120, 161, 322, 120 * 322), "even width"),
    (("x" * 1000, 1, 1, 3, 3), "unsupported encoding"),
])
def test_malformed_raw_images_raise(fields, reason):
    encoding, height, width, step, size = fields
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_raw(encoding, height, width, step, b"\x80" * size)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_data_that_is_not_a_buffer():
    with pytest.raises(ImageDecodeError):
        decode_raw("mono8", 1, 3, 3, [1, 2, 3])


def test_compressed_jpeg_png(frame):
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed("bgr8; jpeg compressed bgr8", array.array("B", jpeg.tobytes()))
    assert out.shape == frame.shape and np.abs(out.astype(int) - frame).mean() < 4
    ok, png = cv2.imencode(".png", frame)
    assert np.array_equal(decode_compressed("png", png.tobytes()), frame)
    # The bytes decide, not the format string.
    assert decode_compressed("", jpeg.tobytes()).shape == frame.shape
    grey_png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))[1]
    assert decode_compressed("mono8; png compressed mono8", grey_png.tobytes()).shape == frame.shape


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A tiny valid JPEG whose SOF header is patched to claim width x height."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    i = 2
    while True:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xC0:
            data[i + 5:i + 7] = height.to_bytes(2, "big")
            data[i + 7:i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + length


def test_malformed_compressed_images_raise(frame):
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    png = cv2.imencode(".png", frame)[1].tobytes()
    cases = {
        "no data": b"",
        "neither JPEG nor PNG": b"GIF89a" + b"\0" * 100,
        "corrupt JPEG": jpeg[:200],
        "corrupt JPEG: no readable": b"\xff\xd8\xff\xe0" + b"\x00" * 5,
        "corrupt PNG": png[:60],
        "larger than": _jpeg_with_size(60000, 60000),
    }
    for reason, data in cases.items():
        with pytest.raises(ImageDecodeError, match=reason):
            decode_compressed("jpeg", data)
    with pytest.raises(ImageDecodeError, match="depth image"):
        decode_compressed("16UC1; compressedDepth png", png)
    rng = np.random.default_rng(0)
    garbage = b"\xff\xd8" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError):
        decode_compressed("jpeg", garbage)


def test_corrupt_jpeg_body_never_crashes(frame):
    """Flipped bytes inside the entropy-coded data: either a (damaged) frame of the right size or an error."""
    jpeg = bytearray(cv2.imencode(".jpg", frame)[1].tobytes())
    rng = np.random.default_rng(1)
    for _ in range(30):
        damaged = bytearray(jpeg)
        for pos in rng.integers(200, len(jpeg) - 2, 20):
            damaged[pos] = int(rng.integers(0, 256))
        try:
            out = decode_compressed("jpeg", bytes(damaged))
        except ImageDecodeError:
            continue
        assert out.shape == frame.shape


def test_max_pixels_is_configurable(frame):
    raw = encode_frame(frame, "bgr8")
    with pytest.raises(ImageDecodeError, match="larger than"):
        _decode(raw, max_pixels=100)
    assert MAX_PIXELS >= 7680 * 4320


def test_encode_raw_rejects_non_bgr():
    with pytest.raises(ValueError):
        encode_raw(np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------------------------- images that decompress to GB
def huge_png(width: int = 16000, height: int = 16000) -> bytes:
    """A grey PNG of width x height pixels (16000 x 16000: about 0.3 MB compressed, 768 MB decoded as BGR), made
    row by row without allocating the image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x80" * width
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def test_a_png_that_decompresses_to_gigabytes_is_refused_from_its_header():
    from agegender_ros.ros_image import ImageTooLarge

    data = huge_png()
    assert len(data) < 1_000_000
    before = _peak_rss_mib()
    with pytest.raises(ImageTooLarge) as info:
        decode_compressed("png", data)
    assert str(info.value).startswith("image 16000x16000 (256,000,000 pixels) is larger than max_image_pixels "
                                      "33,177,600: refused without decoding it")
    assert _peak_rss_mib() - before < 50  # nothing was decoded (it would take 768 MB)
    small = cv2.imencode(".png", np.full((4, 6, 3), 7, np.uint8))[1].tobytes()
    with pytest.raises(ImageTooLarge, match="image 6x4 \\(24 pixels\\) is larger than max_image_pixels 23"):
        decode_compressed("png", small, max_pixels=23)
    assert decode_compressed("png", small, max_pixels=24).shape == (4, 6, 3)
    with pytest.raises(ImageTooLarge, match="image 16000x16000"):  # raw: from the message's own fields
        decode_raw("bgr8", 16000, 16000, 48000, b"")


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm"])
def test_declared_size_of_every_photo_format(ext):
    from agegender_ros.image_header import declared_size

    image = np.zeros((37, 53, 3), np.uint8)
    data = cv2.imencode(ext, image[:, :, 0] if ext == ".pgm" else image)[1].tobytes()
    kind, width, height = declared_size(data)
    assert (width, height) == (53, 37)
    assert declared_size(data[:8]) is None or ext in (".ppm", ".pgm")  # cut short: no size (PNM: text header)
    assert declared_size(b"GIF89a" + data) is None


def test_declared_size_of_lossless_webp_and_both_tiff_byte_orders():
    from agegender_ros.image_header import declared_size

    image = np.zeros((37, 53, 3), np.uint8)
    lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert declared_size(lossless) == ("webp", 53, 37)
    import struct

    for order, magic in (("<", b"II*\x00"), (">", b"MM\x00*")):
        ifd = struct.pack(order + "H", 2) + struct.pack(order + "HHII", 256, 4, 1, 70000) + \
            struct.pack(order + "HHIHH", 257, 3, 1, 900, 0) + b"\0\0\0\0"
        data = magic + struct.pack(order + "I", 8) + ifd
        assert declared_size(data) == ("tiff", 70000, 900), order
