"""vpm.core.images: every upload becomes 8-bit RGB or one clear, typed error that names the file.

All test images are generated here; none are committed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import random
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageFile

from vpm.core import images
from vpm.core.images import (
    MAX_ASPECT_RATIO,
    PREVIEW_MAX_SIDE,
    SUPPORTED_FORMATS,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageShapeError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    crop_to_aspect,
    decode_image,
    make_thumbnail,
    preview_thumbnail,
    sha256_hex,
)

from hostile_images import HOSTILE_IMAGES, guard_resizes

MIB = 1024 * 1024
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
PRODUCT_COLOUR = (200, 40, 70)


# --- generated fixtures ---------------------------------------------------------------------------------------


def encode(image: Image.Image, pil_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    if pil_format == "HEIF":
        # pillow-heif writes without registering its opener, so decode_image's own lazy registration is exercised.
        pillow_heif.from_pillow(image).save(buffer, **params)
    else:
        image.save(buffer, format=pil_format, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: JPEG can't squeeze noise, so a cut anywhere lands in real pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def flag_40x20() -> Image.Image:
    """40 wide, 20 high, blue with a red 8×8 block in the top-left corner."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 8, 8))
    return image


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def black_1bit_png(width: int, height: int) -> bytes:
    """A real, valid all-black 1-bit PNG of any size; zero rows compress ~1000:1, so 30000×30000 is ~110 KB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(6)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    )


def minimal_psd(width: int = 4, height: int = 2) -> bytes:
    """Pillow opens PSD but cannot write it: header, three empty sections, raw RGB planes."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes(3 * width * height)


def assert_close(actual, expected, tolerance: int = 12) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail if anything decodes pixels: size checks must come from the header alone."""

    def refuse(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- valid uploads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pil_format", "extension", "content_type", "tolerance"),
    [
        ("JPEG", "jpg", "image/jpeg", 12),
        ("PNG", "png", "image/png", 0),
        ("WEBP", "webp", "image/webp", 12),
        ("GIF", "gif", "image/gif", 0),
        ("BMP", "bmp", "image/bmp", 0),
        ("TIFF", "tiff", "image/tiff", 0),
        ("HEIF", "heic", "image/heic", 12),
    ],
)
def test_each_supported_format_decodes_to_rgb_with_its_type(pil_format, extension, content_type, tolerance):
    data = encode(Image.new("RGB", (64, 48), PRODUCT_COLOUR), pil_format)

    decoded = decode_image(data, f"product.{extension}")

    assert (decoded.format, decoded.extension, decoded.content_type) == (pil_format, extension, content_type)
    assert SUPPORTED_FORMATS[pil_format] == (extension, content_type)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == decoded.image.size == (64, 48)
    assert_close(decoded.image.getpixel((32, 24)), PRODUCT_COLOUR, tolerance)
    assert decoded.data == data
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()


def test_heic_decodes_in_a_fresh_process_without_anyone_registering_pillow_heif():
    data = encode(Image.new("RGB", (32, 16), RED), "HEIF")
    script = (
        "import sys; from vpm.core.images import decode_image; "
        "d = decode_image(sys.stdin.buffer.read(), 'phone.heic'); print(d.format, d.width, d.height)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=data,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert result.stdout.decode().split() == ["HEIF", "32", "16"]


def test_multi_picture_jpeg_from_a_phone_is_a_jpeg():
    data = encode(Image.new("RGB", (16, 16), RED), "MPO", save_all=True, append_images=[Image.new("RGB", (16, 16))])
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what Pillow calls it

    decoded = decode_image(data, "camera.jpg")

    assert (decoded.format, decoded.extension, decoded.content_type) == ("JPEG", "jpg", "image/jpeg")
    assert_close(decoded.image.getpixel((8, 8)), RED)


def test_max_bytes_and_max_pixels_are_inclusive_limits():
    data = encode(Image.new("RGB", (100, 50), RED), "PNG")
    decoded = decode_image(data, "edge.png", max_bytes=len(data), max_pixels=100 * 50)
    assert decoded.image.size == (100, 50)


def test_identical_bytes_share_a_hash_and_different_bytes_do_not():
    first = encode(Image.new("RGB", (8, 8), RED), "PNG")
    second = encode(Image.new("RGB", (8, 8), BLUE), "PNG")
    assert decode_image(first, "a.png").sha256 == decode_image(bytes(first), "b.png").sha256 == sha256_hex(first)
    assert decode_image(second, "c.png").sha256 != sha256_hex(first)


def test_bytearray_and_memoryview_uploads_are_accepted():
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    for view in (bytearray(data), memoryview(data)):
        decoded = decode_image(view, "upload.png")
        assert decoded.data == data and isinstance(decoded.data, bytes)


def test_decoded_image_repr_leaves_out_the_upload_bytes():
    decoded = decode_image(encode(noise(300, 300), "PNG"), "big.png")
    assert "data=" not in repr(decoded) and len(repr(decoded)) < 400


# --- orientation ----------------------------------------------------------------------------------------------


def test_exif_orientation_6_turns_a_40x20_jpeg_upright():
    data = encode(flag_40x20(), "JPEG", quality=95, exif=exif_orientation(6))

    decoded = decode_image(data, "sideways.jpg")

    assert (decoded.width, decoded.height) == decoded.image.size == (20, 40)
    # Rotated 90° clockwise for display: the old top-left corner is now top-right.
    assert_close(decoded.image.getpixel((16, 3)), RED, 40)
    assert_close(decoded.image.getpixel((3, 3)), BLUE, 40)
    assert decoded.data == data  # the stored upload is never rewritten


def test_heic_orientation_is_applied_exactly_once():
    data = encode(flag_40x20(), "HEIF", quality=95, exif=exif_orientation(6))

    decoded = decode_image(data, "iphone.heic")

    assert decoded.image.size == (20, 40)
    assert_close(decoded.image.getpixel((16, 3)), RED, 40)
    assert_close(decoded.image.getpixel((3, 3)), BLUE, 40)


def test_reencoded_jpeg_keeps_the_corrected_orientation():
    decoded = decode_image(encode(flag_40x20(), "JPEG", quality=95, exif=exif_orientation(6)), "sideways.jpg")

    again = decode_image(encode(decoded.image, "JPEG", quality=90), "again.jpg")

    assert again.image.size == (20, 40)
    assert_close(again.image.getpixel((16, 3)), RED, 40)


# --- colour modes ---------------------------------------------------------------------------------------------


def test_cmyk_jpeg_colours_survive_conversion():
    image = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    image.paste((255, 0, 0, 0), (16, 0, 32, 16))  # cyan
    decoded = decode_image(encode(image, "JPEG", quality=95), "print.jpg")

    assert decoded.image.mode == "RGB"
    assert_close(decoded.image.getpixel((4, 8)), RED, 20)
    assert_close(decoded.image.getpixel((28, 8)), (0, 255, 255), 20)


SIXTEEN_BIT = np.array([[0, 128, 32768, 65535]], dtype=np.uint16)
EIGHT_BIT = [0, 0, 128, 255]  # scaled by 255/65535, not clipped at 255


def _sixteen_bit_files():
    big_endian = Image.new("I;16B", (4, 1))
    big_endian.frombytes(SIXTEEN_BIT.astype(">u2").tobytes())
    return {
        "I;16 PNG": encode(Image.fromarray(SIXTEEN_BIT), "PNG"),
        "I;16B TIFF": encode(big_endian, "TIFF"),
        "I (32-bit) TIFF": encode(Image.fromarray(SIXTEEN_BIT.astype(np.int32)), "TIFF"),
    }


@pytest.mark.parametrize("kind", list(_sixteen_bit_files()))
def test_16_bit_greyscale_is_scaled_not_clipped(kind):
    data = _sixteen_bit_files()[kind]
    expected_mode = kind.split()[0]
    assert Image.open(io.BytesIO(data)).mode == expected_mode  # the file really is in that mode

    decoded = decode_image(data, "scan.png")

    assert decoded.image.mode == "RGB"
    assert [decoded.image.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in EIGHT_BIT]


def test_float_tiff_in_0_to_1_is_scaled_to_0_to_255():
    data = encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "TIFF")
    decoded = decode_image(data, "hdr.tiff")
    assert [decoded.image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_one_bit_and_greyscale_become_rgb():
    one_bit = Image.new("1", (4, 1), 0)
    one_bit.putpixel((1, 0), 1)
    grey = Image.new("L", (4, 1), 90)
    assert [decode_image(encode(one_bit, "BMP"), "fax.bmp").image.getpixel((x, 0)) for x in (0, 1)] == [
        (0, 0, 0),
        (255, 255, 255),
    ]
    assert decode_image(encode(grey, "PNG"), "grey.png").image.getpixel((0, 0)) == (90, 90, 90)


def test_rgba_transparency_becomes_white():
    image = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black over white -> mid grey

    decoded = decode_image(encode(image, "PNG"), "cutout.png")

    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == WHITE
    assert decoded.image.getpixel((1, 0)) == RED
    assert_close(decoded.image.getpixel((2, 0)), (127, 127, 127), 1)


def test_greyscale_with_alpha_becomes_white_where_transparent():
    image = Image.new("LA", (2, 1), (0, 0))
    image.putpixel((1, 0), (40, 255))
    decoded = decode_image(encode(image, "PNG"), "la.png")
    assert [decoded.image.getpixel((x, 0)) for x in (0, 1)] == [WHITE, (40, 40, 40)]


@pytest.mark.parametrize("pil_format", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(pil_format):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), index 1 red
    image.putpixel((1, 0), 1)
    data = encode(image, pil_format, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"

    decoded = decode_image(data, f"logo.{pil_format.lower()}")

    assert [decoded.image.getpixel((x, 0)) for x in (0, 1)] == [WHITE, RED]


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    decoded = decode_image(data, "spinner.gif")

    assert decoded.image.getpixel((5, 5)) == RED


# --- bad uploads: one typed error each, naming the file ----------------------------------------------------


def test_empty_upload():
    with pytest.raises(EmptyImageError, match=r"^photo\.jpg is empty") as caught:
        decode_image(b"", "photo.jpg")
    assert caught.value.filename == "photo.jpg"


def test_text_renamed_jpg_is_not_an_image():
    with pytest.raises(NotAnImageError) as caught:
        decode_image(b"Shopping list:\n- milk\n- eggs\n", "notes.jpg")
    assert str(caught.value) == "notes.jpg is not an image (JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC expected)"
    assert caught.value.filename == "notes.jpg"


def test_truncated_jpeg_fails_at_decode_with_a_clear_message():
    data = encode(noise(200, 200), "JPEG", quality=90)[:-5000]
    Image.open(io.BytesIO(data))  # opens fine: only decoding finds the damage

    with pytest.raises(TruncatedImageError) as caught:
        decode_image(data, "photo.jpg")
    assert str(caught.value) == "photo.jpg is truncated or damaged: re-export or re-upload it"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode(noise(120, 120), "PNG")[:3000], id="png-cut-in-pixels"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00", id="png-cut-in-header"),
        pytest.param(b"\xff\xd8\xff\xe0\x00", id="jpeg-cut-in-header"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "HEIF")[:40], id="heic-cut-in-header"),
    ],
)
def test_other_truncations_are_truncated_errors(data):
    with pytest.raises(TruncatedImageError, match=r"^upload\.bin is truncated"):
        decode_image(data, "upload.bin")


def test_too_many_bytes_says_how_big_and_what_the_limit_is():
    data = b"\xff" * int(25.3 * MIB)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, "big.jpg", max_bytes=20 * MIB)
    assert str(caught.value) == "big.jpg is 25.3 MB; the upload limit is 20 MB (VPM_MAX_UPLOAD_MB)"


def test_just_over_the_byte_limit_does_not_read_as_equal_to_it():
    with pytest.raises(ImageTooLargeError, match=r"^edge\.jpg is 20\.000001 MB; the upload limit is 20 MB"):
        decode_image(b"\xff" * (20 * MIB + 1), "edge.jpg")


def test_decompression_bomb_png_is_refused_from_its_header(no_pixel_decoding):
    data = black_1bit_png(30000, 30000)  # a genuine 900 MP image in ~110 KB
    assert len(data) < 200_000

    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, "huge.png")
    assert str(caught.value) == (
        "huge.png is 30000×30000 pixels (900 MP); the limit is 50 MP: resize it and try again"
    )


def test_too_many_pixels_below_pillows_own_limit(no_pixel_decoding):
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(black_1bit_png(8000, 8000), "poster.png")
    assert str(caught.value) == "poster.png is 8000×8000 pixels (64 MP); the limit is 50 MP: resize it and try again"


def test_max_pixels_parameter_is_honoured():
    data = encode(Image.new("RGB", (100, 51)), "PNG")
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, "small.png", max_pixels=5000)
    assert str(caught.value).startswith("small.png is 100×51 pixels (0.0051 MP); the limit is 0.005 MP:")


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_a_strip_is_refused_from_its_header_naming_its_shape_and_the_limit(hostile, no_pixel_decoding):
    assert len(hostile.data) < 1000  # a few hundred bytes: the pixel cap alone lets it through

    with pytest.raises(ImageShapeError) as caught:
        decode_image(hostile.data, hostile.filename)

    width, height = hostile.size
    assert str(caught.value) == (
        f"{hostile.filename} is {width}×{height} pixels (aspect ratio {max(width, height) // min(width, height)}:1); "
        f"the limit is {MAX_ASPECT_RATIO}:1: crop it to the product and try again"
    )
    assert caught.value.filename == hostile.filename


@pytest.mark.parametrize("size", [(40, 2), (2, 40), (1, 20), (970, 90), (90, 970)])
def test_aspect_ratios_up_to_the_limit_are_accepted(size):
    assert decode_image(encode(Image.new("RGB", size, RED), "PNG"), "banner.png").image.size == size


def test_just_over_the_aspect_limit_does_not_read_as_equal_to_it():
    with pytest.raises(ImageShapeError) as caught:
        decode_image(encode(Image.new("RGB", (20, 401), RED), "PNG"), "ribbon.png")
    assert str(caught.value).startswith("ribbon.png is 20×401 pixels (aspect ratio 20.05:1); the limit is 20:1:")


def test_max_aspect_parameter_is_honoured():
    data = encode(Image.new("RGB", (300, 100), RED), "PNG")
    assert decode_image(data, "wide.png", max_aspect=3).width == 300
    with pytest.raises(ImageShapeError) as caught:
        decode_image(data, "wide.png", max_aspect=2.5)
    assert str(caught.value).startswith("wide.png is 300×100 pixels (aspect ratio 3:1); the limit is 2.5:1:")


@pytest.mark.parametrize("warning_action", ["ignore", "error"])
def test_pillows_bomb_warning_range_is_refused_even_with_a_higher_max_pixels(warning_action):
    # 100 MP sits between Pillow's warning (~89 MP) and error (~179 MP) limits; our limit never exceeds Pillow's.
    data = black_1bit_png(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter(warning_action, Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match=r"^scan\.png is 10000×10000 pixels \(100 MP\); the limit is"):
            decode_image(data, "scan.png", max_pixels=10**9)


@pytest.mark.parametrize(
    ("data", "format_name"),
    [
        pytest.param(encode(Image.new("RGB", (32, 32), RED), "ICO"), "ICO", id="ico"),
        pytest.param(minimal_psd(), "PSD", id="psd"),
        pytest.param(encode(Image.new("RGB", (16, 16), RED), "AVIF"), "AVIF", id="avif"),
        pytest.param(encode(Image.new("RGB", (16, 16), RED), "PPM"), "PPM", id="ppm"),
    ],
)
def test_real_images_in_other_formats_are_unsupported(data, format_name):
    with pytest.raises(UnsupportedImageError) as caught:
        decode_image(data, "icon.img")
    assert str(caught.value) == (
        f"icon.img is in {format_name} format, which is not supported "
        "(JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC expected): convert it and try again"
    )


def test_pdf_is_unsupported_with_advice():
    data = encode(Image.new("RGB", (16, 16), RED), "PDF")
    with pytest.raises(UnsupportedImageError, match=r"^catalog\.pdf is a PDF document, not an image"):
        decode_image(data, "catalog.pdf")


def test_heic_without_pillow_heif_installed_says_so(monkeypatch):
    data = encode(Image.new("RGB", (8, 8)), "HEIF")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import now fails, as on a server without it
    images._heif_available.cache_clear()
    try:
        with pytest.raises(UnsupportedImageError, match=r"^phone\.heic is a HEIC image, but HEIC support"):
            decode_image(data, "phone.heic")
    finally:
        monkeypatch.undo()
        images._heif_available.cache_clear()
    assert decode_image(data, "phone.heic").format == "HEIF"


def test_control_characters_in_the_name_do_not_reach_the_message():
    with pytest.raises(NotAnImageError) as caught:
        decode_image(b"not an image", "evil\nname.jpg")
    assert str(caught.value).startswith("evil?name.jpg is not an image")
    assert caught.value.filename == "evil\nname.jpg"


def test_errors_are_value_errors_and_survive_pickling():
    error_types = (
        EmptyImageError, TruncatedImageError, NotAnImageError, ImageTooLargeError, ImageShapeError,
        UnsupportedImageError,
    )
    for error_type in error_types:
        assert issubclass(error_type, ImageError) and issubclass(error_type, ValueError)
    error = pickle.loads(pickle.dumps(NotAnImageError("x.jpg is not an image", "x.jpg")))
    assert (type(error), str(error), error.filename) == (NotAnImageError, "x.jpg is not an image", "x.jpg")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own notes about the damage it finds
@pytest.mark.parametrize("pil_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF"])
def test_damaged_files_give_an_image_or_an_image_error_never_a_raw_one(pil_format):
    original = encode(noise(48, 32, seed=1), pil_format)
    rng = random.Random(pil_format)
    candidates = [original[:cut] for cut in sorted(rng.sample(range(1, len(original)), 25))]
    for _ in range(25):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        candidates.append(bytes(damaged))

    outcomes = set()
    for data in candidates:
        try:
            decoded = decode_image(data, "fuzz.bin")
        except ImageError as error:
            assert "fuzz.bin" in str(error)
            outcomes.add(type(error).__name__)
        else:
            assert decoded.image.mode == "RGB" and decoded.image.size[0] > 0
            outcomes.add("decoded")
    assert outcomes - {"decoded"}, "damage that never raises means this test damaged nothing"


# --- thumbnails and re-encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1000, 500), 256, (256, 128)),
        ((30, 300), 64, (6, 64)),
        ((100, 50), 256, (100, 50)),  # never upscaled
    ],
)
def test_thumbnail_is_webp_within_bounds_keeping_aspect(size, max_side, expected):
    source = Image.new("RGB", size, PRODUCT_COLOUR)

    thumbnail = Image.open(io.BytesIO(make_thumbnail(source, max_side)))

    assert thumbnail.format == "WEBP"
    assert thumbnail.size == expected
    assert source.size == size  # the caller's image is untouched


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_thumbnail_of_a_strip_only_ever_shrinks(hostile, monkeypatch):
    """make_thumbnail never passes through decode_image's checks itself: it must be bounded on its own."""
    source = hostile.pil()
    guard_resizes(monkeypatch, max_pixels=source.width * source.height)

    thumbnail = Image.open(io.BytesIO(make_thumbnail(source, 256)))

    assert max(thumbnail.size) == 256 and min(thumbnail.size) == 1


def test_thumbnail_of_a_transparent_image_is_white_where_transparent():
    source = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    thumbnail = Image.open(io.BytesIO(make_thumbnail(source, 32))).convert("RGB")
    assert_close(thumbnail.getpixel((16, 16)), WHITE, 4)


def test_decoded_image_is_usable_after_decode_returns():
    decoded: DecodedImage = decode_image(encode(Image.new("RGB", (20, 10), RED), "PNG"), "plain.png")
    assert decoded.image.getpixel((0, 0)) == RED  # the source file object is closed; the pixels are ours
    assert Image.open(io.BytesIO(make_thumbnail(decoded.image))).size == (20, 10)


# --- bounding resizes and previews ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(320, 240), (40, 2), (2, 40), (1, 1), (0, 5)])
def test_crop_to_aspect_returns_an_image_within_the_limit_itself(size):
    image = Image.new("RGB", size, RED)
    assert crop_to_aspect(image) is image  # so every image decode_image accepts embeds exactly as before


@pytest.mark.parametrize(
    ("size", "expected_box"),
    [
        ((1, 200_000), (0, 99_990, 1, 100_010)),
        ((16_383, 1), (8181, 0, 8201, 1)),
        ((40_000, 2), (19_980, 0, 20_020, 2)),
        ((3, 100), (0, 20, 3, 80)),
    ],
)
def test_crop_to_aspect_keeps_the_centre_of_a_strip(size, expected_box):
    strip = Image.new("L", size)
    strip.paste(255, expected_box)  # white exactly where the crop should land

    cropped = crop_to_aspect(strip)

    width, height = cropped.size
    assert max(width, height) == min(width, height) * MAX_ASPECT_RATIO
    assert cropped.getextrema() == (255, 255)


def test_crop_to_aspect_takes_a_custom_limit_and_refuses_one_below_one():
    assert crop_to_aspect(Image.new("RGB", (1000, 10)), max_aspect=2.5).size == (25, 10)
    with pytest.raises(ValueError, match="at least 1"):
        crop_to_aspect(Image.new("RGB", (10, 10)), max_aspect=0.5)


def test_preview_is_a_small_upright_webp():
    photo = Image.new("RGB", (800, 400), BLUE)
    photo.paste(RED, (0, 0, 100, 100))
    data = encode(photo, "JPEG", exif=exif_orientation(6))  # stored sideways: turned 90° clockwise to show

    preview = Image.open(io.BytesIO(preview_thumbnail(data, "photo.jpg")))

    assert preview.format == "WEBP"
    assert preview.size == (PREVIEW_MAX_SIDE // 2, PREVIEW_MAX_SIDE)
    assert_close(preview.getpixel((preview.width - 5, 5)), RED, 40)  # the top-left corner is now top-right


def test_preview_of_a_large_jpeg_decodes_it_at_a_reduced_scale(monkeypatch):
    seen = []
    monkeypatch.setattr(images, "make_thumbnail", lambda image, max_side: seen.append(image.size) or b"webp")

    preview_thumbnail(encode(noise(2400, 1600), "JPEG"), "big.jpg")

    assert seen == [(600, 400)]  # a quarter of each side: still more than the 280 px preview needs


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_preview_refuses_what_decode_image_refuses(hostile):
    with pytest.raises(ImageShapeError, match=rf"^{hostile.filename} is {hostile.shape} pixels"):
        preview_thumbnail(hostile.data, hostile.filename)
    with pytest.raises(ImageTooLargeError):
        preview_thumbnail(b"\xff" * 200, "big.jpg", max_bytes=100)
