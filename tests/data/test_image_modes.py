"""Every PIL mode is read right or refused with a problem code: alpha is
composited on white for gray nets as for RGB ones, LAB is refused."""
import numpy as np
import pytest
from PIL import Image

from finetune.common.errors import DataError
from finetune.data.datasets import ImagePathDataset
from finetune.data.transforms import check_image
from finetune.data.transforms import CaffePreprocess

LAB_PROBLEM = 'undecodable: LAB images are not supported'


def inked_rgba():
    """(6, 8) RGBA: black ink on a transparent background, a half
    transparent red pixel and an opaque blue one."""
    rgba = np.zeros((6, 8, 4), np.uint8)  # transparent black
    rgba[2:4, 1:7] = (0, 0, 0, 255)  # the ink
    rgba[0, 0] = (200, 30, 90, 128)
    rgba[5, 7] = (20, 40, 220, 255)
    return rgba


def on_white_luminance(rgba):
    """Independent reference: straight alpha composited on white, then
    ITU-R 601 luma, float64 (H, W) in 0-255."""
    alpha = rgba[..., 3:].astype(np.float64) / 255
    rgb = rgba[..., :3] * alpha + 255 * (1 - alpha)
    return rgb @ np.array([0.299, 0.587, 0.114])


def in_mode(rgba, mode):
    """The RGBA array as a PIL image of ``mode`` (and what it shows, as
    straight RGBA)."""
    img = Image.fromarray(rgba, 'RGBA')
    if mode == 'P':  # a palette with a transparent entry
        img = Image.fromarray(rgba[..., :3], 'RGB').quantize(8)
        transparent = np.asarray(img)[0, 1]  # an ink-free, clear pixel
        img.info['transparency'] = int(transparent)
    elif mode != 'RGBA':
        img = img.convert(mode)
    return img, np.asarray(img.convert('RGBA'))


def preprocess(channels, size=(6, 8)):
    return CaffePreprocess(size=size, crop_size=None, mean=None,
                           channels=channels)


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'PA', 'P', 'RGBa'])
def test_gray_nets_see_transparency_on_white_as_rgb_nets_do(mode):
    img, shown = in_mode(inked_rgba(), mode)
    gray = preprocess(1).image_array(img)
    assert gray.shape == (1, 6, 8) and gray.dtype == np.float32
    expected = on_white_luminance(shown)
    assert np.abs(gray[0] - expected).max() <= 1.0
    bgr = preprocess(3).image_array(img)
    rgb_luminance = bgr[::-1].transpose(1, 2, 0) @ np.array(
        [0.299, 0.587, 0.114])
    assert np.abs(gray[0] - rgb_luminance).max() <= 1.0
    if mode != 'P':  # the ink stays black, its background white
        assert gray[0, 2, 3] <= 1 and gray[0, 5, 0] >= 254


def test_a_gray_png_with_alpha_from_disk_is_composited_on_white(tmp_path):
    ink = np.zeros((6, 8, 2), np.uint8)  # gray + alpha, transparent black
    ink[2:4, 1:7] = (0, 255)
    path = str(tmp_path / 'ink.png')
    Image.fromarray(ink, 'LA').save(path)
    gray = preprocess(1).image_array(path)
    assert gray[0, 0, 0] == 255 and gray[0, 2, 3] == 0


@pytest.fixture
def lab_tiff(tmp_path):
    path = str(tmp_path / 'lab.tif')
    Image.new('LAB', (8, 8), (50, 0, 0)).save(path)
    assert Image.open(path).mode == 'LAB'
    return path


@pytest.mark.parametrize('channels', [3, 1])
def test_a_lab_tiff_is_refused_with_a_problem_code(lab_tiff, channels):
    assert check_image(lab_tiff, channels) == LAB_PROBLEM
    with pytest.raises(DataError) as error:
        preprocess(channels)(lab_tiff)
    assert str(error.value) == '%s: %s' % (lab_tiff, LAB_PROBLEM)
    dataset = ImagePathDataset([lab_tiff], preprocess(channels))
    image, message = dataset[0]
    assert message == '%s: %s' % (lab_tiff, LAB_PROBLEM)
    assert not image.any()


def test_predict_raises_data_error_on_a_lab_image(lab_tiff, digits):
    import finetune
    _, pretrained = digits
    predictor = finetune.load(pretrained, backend='chainer')
    with pytest.raises(DataError, match=LAB_PROBLEM):
        predictor.predict(lab_tiff)
    with pytest.raises(DataError, match=LAB_PROBLEM):
        predictor.predict(Image.open(lab_tiff))


def test_a_premultiplied_gray_image_is_refused():
    img = Image.new('La', (4, 4))
    with pytest.raises(DataError, match='undecodable: La images are not '
                       'supported'):
        preprocess(1).image_array(img)


def test_a_float_image_with_nan_and_inf_scales_by_its_finite_peak():
    values = np.array([[np.nan, np.inf], [-np.inf, 2.0]], np.float32)
    gray = preprocess(1, size=(2, 2)).image_array(Image.fromarray(values))
    # NaN and -Inf are black, +Inf white; 2.0 is the finite peak: white
    assert gray[0].tolist() == [[0, 255], [0, 255]]


def sixteen_bit_gray_alpha_png(gray, alpha):
    """PNG bytes of colour type 4 (gray + alpha) at 16 bits, which PIL
    cannot write: ``gray`` and ``alpha`` are uint16 (H, W)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data +
                struct.pack('>I', zlib.crc32(kind + data)))
    height, width = gray.shape
    pixels = np.stack([gray, alpha], axis=-1).astype('>u2')
    raw = b''.join(b'\0' + row.tobytes() for row in pixels)
    header = struct.pack('>IIBBBBB', width, height, 16, 4, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
            chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def test_a_16_bit_gray_png_with_alpha_is_composited_on_white(tmp_path):
    gray = np.zeros((6, 8), np.uint16)  # black everywhere ...
    alpha = np.zeros((6, 8), np.uint16)  # ... transparent but the ink
    alpha[2:4, 1:7] = 65535
    path = tmp_path / 'ink16.png'
    path.write_bytes(sixteen_bit_gray_alpha_png(gray, alpha))
    gray_input = preprocess(1).image_array(str(path))
    expected = np.where(alpha == 65535, 0.0, 255.0)
    assert np.abs(gray_input[0] - expected).max() <= 1
