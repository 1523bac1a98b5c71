"""Image loading: every Pillow mode we promise, and clear errors for bad files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxviz.errors import JaxvizError
from jaxviz.images import MAX_PIXELS, fit_image, load_image, save_image, to_uint8


def test_rgb_png_roundtrip(tmp_path, rng):
    pixels = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(to_uint8(load_image(tmp_path / "a.png")), pixels)


def test_grey_palette_rgba_and_16bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    img = load_image(tmp_path / "grey.png")
    assert img.shape == (8, 8, 3) and np.allclose(img[..., 0], grey / 255) and np.allclose(img[..., 0], img[..., 2])

    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "pal.png")
    assert np.allclose(load_image(tmp_path / "pal.png"), 200 / 255, atol=2 / 255)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, half transparent -> composited on white
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    px = load_image(tmp_path / "rgba.png")[0, 0]
    np.testing.assert_allclose(px, [1.0, 127 / 255, 127 / 255], atol=1e-2)

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000 + 1000)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grey (mode I;16)
    img16 = load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(img16[..., 1], deep / 65535, atol=1e-6)  # not clipped to 8 bits


def test_16bit_tiff_of_either_byte_order_and_pgm(tmp_path):
    """A big-endian 16-bit TIFF (Pillow's I;16B, numpy '>u2') reads as its little-endian twin and
    as the same values in a 16-bit PNG and PGM (Pillow's mode I, int32); integers beyond 16 bits
    are refused, not clipped."""
    deep = (np.arange(48 * 64).reshape(48, 64) * 21 % 65536).astype(np.uint16)
    Image.frombytes("I;16B", (64, 48), deep.astype(">u2").tobytes()).save(tmp_path / "big.tif")
    Image.frombytes("I;16", (64, 48), deep.astype("<u2").tobytes()).save(tmp_path / "little.tif")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(deep).save(tmp_path / "deep.pgm")
    expected = np.repeat((deep / 65535.0)[..., None], 3, -1)
    for name in ("big.tif", "little.tif", "deep.png", "deep.pgm"):
        np.testing.assert_allclose(load_image(tmp_path / name), expected, atol=1e-6, err_msg=name)
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(JaxvizError, match="outside 16 bits"):
        load_image(tmp_path / "wide.tif")


def test_extreme_aspect_ratio_is_refused_before_the_resize():
    """The evaluation transform resizes the short side to 256: a 8000x1 strip would become a
    2,048,000 x 256 intermediate (12 GB of memory in the CLI); refused with one line. Stretching
    is bounded by the output size and still works."""
    strip = np.zeros((1, 8000, 3), np.uint8)
    with pytest.raises(JaxvizError, match="aspect ratio too extreme"):
        fit_image(strip, 224)
    with pytest.raises(JaxvizError, match="aspect ratio too extreme"):
        fit_image(strip.transpose(1, 0, 2), (224, 160))
    assert fit_image(strip, 224, "stretch").shape == (224, 224, 3)
    assert fit_image(np.zeros((300, 9000, 3), np.uint8), 224).shape == (224, 224, 3)  # 30:1 is fine
    # the bound grows with the output: a 3:2 photograph fitted to 3600 px (a 33 MP intermediate)
    assert fit_image(np.zeros((200, 300, 3), np.uint8), 3600).shape == (3600, 3600, 3)


def test_exif_rotation_on_request(tmp_path):
    pixels = np.zeros((4, 8, 3), np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", exif=True).shape == (8, 4, 3)
    assert load_image(tmp_path / "r.jpg").shape == (4, 8, 3)  # as stored: torchvision ignores EXIF


def test_samples_and_fit():
    cat = load_image("chelsea")
    assert cat.shape == (300, 451, 3) and cat.dtype == np.float32 and 0 <= cat.min() and cat.max() <= 1
    assert load_image("brick", 32).shape == (32, 32, 3)  # grey sample -> RGB
    crop = fit_image(cat, (40, 30), "crop")
    assert crop.shape == (40, 30, 3)
    with pytest.raises(JaxvizError, match="unknown fit"):
        fit_image(cat, 10, "squash")


@pytest.mark.parametrize("content,match", [(None, "no such image"), (b"not an image", "cannot read image"),
                                           (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot read image")])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JaxvizError, match=match):
        load_image(path)
    with pytest.raises(JaxvizError, match="directory"):
        load_image(tmp_path)


def test_huge_image_is_refused(tmp_path, monkeypatch):
    Image.new("L", (20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr("jaxviz.images.MAX_PIXELS", 399)
    with pytest.raises(JaxvizError, match="too large"):
        load_image(tmp_path / "big.png")
    assert MAX_PIXELS == 100_000_000


def test_save_image_checks_directory(tmp_path):
    save_image(np.ones((2, 2, 3)), tmp_path / "ok.png")
    assert (tmp_path / "ok.png").is_file()
    with pytest.raises(JaxvizError, match="does not exist"):
        save_image(np.ones((2, 2, 3)), tmp_path / "missing" / "x.png")


@pytest.mark.parametrize("size,fit,transform", [
    (224, "eval", None), ((160, 224), "eval", None), (100, "stretch", None), (64, "eval", "lite"),
    ((37, 50), "eval", None)])
def test_uint8_photographs_fit_as_the_float_image(tmp_path, rng, size, fit, transform):
    """8-bit RGB files are fitted without the full-size float image: the same values bit for bit."""
    from jaxviz.images import _to_float_rgb
    from jaxviz.interface.preprocessing import LITE_EVAL
    transform = LITE_EVAL if transform == "lite" else None
    pixels = (rng.random((83, 131, 3)) * 255).astype(np.uint8)
    pixels[:20] = 255 - pixels[:20] // 7  # some structure: flat and noisy areas
    Image.fromarray(pixels).save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png", size, fit, transform)
    assert loaded.dtype == np.float32
    assert np.array_equal(loaded, fit_image(_to_float_rgb(pixels), size, fit, transform))
    assert np.array_equal(fit_image(pixels, size, fit, transform), loaded)


def test_rgb8_files_stay_pillow_images_until_the_resize(tmp_path, rng):
    """An 8-bit RGB file goes to the resize as the decoded Pillow image (no array round trip); other
    layouts as arrays; the fitted pixels equal those of the decoded array, EXIF orientation included."""
    from jaxviz.images import _read_file
    pixels = (rng.random((41, 67, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    assert isinstance(_read_file(tmp_path / "rgb.png", keep_rgb8=True), Image.Image)
    assert isinstance(_read_file(tmp_path / "rgb.png"), np.ndarray)
    assert isinstance(_read_file(tmp_path / "grey.png", keep_rgb8=True), np.ndarray)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the loaded image is 67 x 41
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    decoded = _read_file(tmp_path / "rot.jpg", exif=True)
    assert decoded.shape[:2] == (67, 41)
    for size, fit in ((224, "eval"), ((30, 50), "eval"), (20, "stretch")):
        assert np.array_equal(load_image(tmp_path / "rot.jpg", size, fit, exif=True), fit_image(decoded, size, fit))
