"""Tests of dental_d2.data.image_io: image kinds, EXIF orientation and unreadable files."""

import numpy as np
import pytest
from PIL import Image

from dental_d2 import DentalError
from dental_d2.data import image_size, read_image
from dental_d2.data.image_io import decode_check, to_uint8


def test_rgb_jpeg_channel_order(tmp_path):
    path = tmp_path / "red.png"
    pixels = np.zeros((8, 10, 3), np.uint8)
    pixels[..., 0] = 200  # red
    Image.fromarray(pixels).save(path)
    rgb = read_image(path, format="RGB")
    bgr = read_image(path)
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [200, 0, 0]
    assert bgr[0, 0].tolist() == [0, 0, 200]


def test_grayscale_png_becomes_three_channels(tmp_path):
    path = tmp_path / "gray.png"
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray, mode="L").save(path)
    image = read_image(path)
    assert image.shape == (12, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_16bit_png_is_stretched_over_its_own_range(tmp_path):
    path = tmp_path / "xray16.png"
    # A 12-bit radiograph in a 16-bit container: values 1000..4095.
    values = np.linspace(1000, 4095, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(path, format="RGB")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
    # Linear: the middle value lands in the middle.
    assert abs(int(image[10, 0, 0]) - round(255 * (int(values[10, 0]) - 1000) / 3095)) <= 1


def test_constant_16bit_image_does_not_divide_by_zero(tmp_path):
    path = tmp_path / "flat16.png"
    Image.fromarray(np.full((5, 6), 3000, np.uint16)).save(path)
    with np.errstate(all="raise"):
        image = read_image(path)
    assert image.shape == (5, 6, 3) and not image.any()


def test_to_uint8_float_with_nan():
    values = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32)
    assert to_uint8(values).tolist() == [[0, 128], [255, 0]]


def test_rgba_png_is_composited_on_black(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., :3] = (100, 150, 200)
    pixels[..., 3] = 255
    pixels[0, 0, 3] = 0  # fully transparent
    pixels[1, 1, 3] = 128  # half transparent
    Image.fromarray(pixels, mode="RGBA").save(path)
    image = read_image(path, format="RGB")
    assert image.shape == (4, 4, 3)
    assert image[0, 0].tolist() == [0, 0, 0]
    assert image[2, 2].tolist() == [100, 150, 200]
    assert image[1, 1].tolist() == [50, 75, 100]


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    indices = np.array([[0, 1], [1, 1]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(path, transparency=0)
    result = read_image(path, format="RGB")
    assert result[0, 0].tolist() == [0, 0, 0]
    assert result[1, 1].tolist() == [0, 255, 0]


def test_exif_orientation_6_rotates_the_image(tmp_path):
    path = tmp_path / "rotated.jpg"
    stored = np.full((40, 60, 3), 255, np.uint8)  # stored 40 high, 60 wide
    stored[:8, :8] = (255, 0, 0)  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    image = read_image(path, format="RGB")
    assert image.shape == (60, 40, 3)
    # Rotated clockwise, the stored top-left corner is shown at the top-right.
    top_right = image[3, 36]
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60
    assert image[3, 3].min() > 200  # the top-left is white now
    assert image_size(path) == (60, 40)
    assert decode_check(path) == (60, 40)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(DentalError, match="nope.jpg.*not found"):
        read_image(path)
    with pytest.raises(DentalError, match="nope.jpg"):
        image_size(path)


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(DentalError, match="garbage.jpg.*not a readable image"):
        read_image(path)


def test_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DentalError, match="cut.jpg.*corrupt or truncated") as info:
        read_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(DentalError, match="cut.jpg"):
        decode_check(path)


def test_unsupported_format_is_a_bug_not_a_user_error(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="BGR"):
        read_image(path, format="YUV")


def test_decode_image_reads_bytes_as_read_image_reads_files(tmp_path):
    from dental_d2.data.image_io import ImageTooLargeError, decode_image

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "rgba.png": (Image.fromarray(rng.integers(0, 256, (9, 7, 4), np.uint8)), {}),
        "xray16.png": (Image.fromarray(rng.integers(0, 4096, (9, 7)).astype(np.uint16)), {}),
        "rotated.jpg": (Image.fromarray(rng.integers(0, 256, (9, 7, 3), np.uint8)), {"exif": exif}),
    }
    for name, (image, options) in files.items():
        image.save(tmp_path / name, **options)
        data = (tmp_path / name).read_bytes()
        np.testing.assert_array_equal(decode_image(data, name), read_image(tmp_path / name))
    with pytest.raises(ImageTooLargeError, match="xray16.png: 7x9 is 0.0 megapixels"):
        decode_image((tmp_path / "xray16.png").read_bytes(), "xray16.png", max_pixels=62)
    with pytest.raises(DentalError, match="up.jpg: not a readable image \\(unknown format\\)"):
        decode_image(b"not an image", "up.jpg")
