"""Caffe's preprocessing: modes, channel order, mean, crops, round trip."""
import numpy as np
import pytest
from PIL import Image

from tests.support.paths import data_path
from finetune.common.errors import DataError
from finetune.data.resources import imagenet_mean
from finetune.data.transforms import CaffePreprocess
from finetune.data.transforms import from_array
from finetune.data.transforms import read_image
from finetune.data.transforms import to_array
from finetune.data.transforms import upright


def test_to_array_is_bgr_chw_0_255():
    img = Image.new('RGB', (4, 3), (10, 20, 30))
    array = to_array(img)
    assert array.shape == (3, 3, 4) and array.dtype == np.float32
    assert list(array[:, 0, 0]) == [30, 20, 10]  # B, G, R


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'CMYK', 'P', 'LA', '1', 'I',
                                  'I;16', 'F', 'RGB'])
def test_any_pil_mode_becomes_a_bgr_input(mode):
    rgb = Image.open(data_path('cat.jpg')).convert('RGB')
    if mode == 'I;16':
        gray = np.asarray(rgb.convert('L'), np.uint16) * 257
        img = Image.fromarray(gray)
        assert img.mode == 'I;16'
    else:
        img = rgb.convert(mode)
    x = CaffePreprocess(mean=None)(img)
    assert x.shape == (3, 227, 227) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 100


def test_sixteen_bit_scales_to_the_same_as_eight_bit():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    eight = to_array(Image.fromarray(gray, 'L'))
    sixteen_bit = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen_bit.mode == 'I;16'
    sixteen = to_array(sixteen_bit)
    assert np.abs(eight - sixteen).max() <= 1


def test_transparent_pixels_composite_on_white():
    img = Image.new('RGBA', (2, 2), (0, 0, 0, 0))
    assert (to_array(img) == 255).all()


def test_mean_image_subtraction_and_center_crop():
    mean = imagenet_mean()
    img = Image.open(data_path('cat.jpg'))
    prep = CaffePreprocess(mean=mean)
    full = CaffePreprocess(mean=None, crop_size=None)(img)
    x = prep(img)
    expected = (full - mean)[:, 14:241, 14:241]  # (256 - 227) // 2 == 14
    assert np.allclose(x, expected, atol=1e-4)


def test_mean_pixel_and_scale_and_gray():
    prep = CaffePreprocess(size=(28, 28), crop_size=None, mean=[10.0],
                           scale=0.5, channels=1)
    img = Image.new('L', (40, 40), 110)
    x = prep(img)
    assert x.shape == (1, 28, 28)
    assert np.allclose(x, 50.0)


def test_random_crop_and_mirror_are_seeded():
    img = Image.open(data_path('fish-bike.jpg'))
    prep = CaffePreprocess(mean=None)
    full = prep.image_array(img)
    crops = [prep.crop(full, train=True, rng=np.random.RandomState(s))
             for s in range(20)]
    again = [prep.crop(full, train=True, rng=np.random.RandomState(s))
             for s in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(crops, again))
    assert len({c.tobytes() for c in crops}) > 10
    # every crop is a window of the image, mirrored or not
    mirrored = 0
    for crop in crops:
        for candidate, flipped in ((crop, False), (crop[:, :, ::-1], True)):
            corner = candidate[:, 0, 0]
            hits = np.argwhere((full == corner[:, None, None]).all(axis=0))
            if any(np.array_equal(full[:, t:t + 227, l:l + 227], candidate)
                   for t, l in hits):
                mirrored += flipped
                break
        else:
            pytest.fail('a training crop is not a window of the image')
    assert 0 < mirrored < 20


def test_from_array_round_trip():
    img = Image.open(data_path('cat.jpg')).convert('RGB')
    back = from_array(to_array(img))
    assert back.mode == 'RGB'
    assert np.array_equal(np.asarray(back), np.asarray(img))
    gray = from_array(np.full((1, 5, 5), 300.0))
    assert gray.mode == 'L' and np.asarray(gray).max() == 255


def test_unreadable_images_raise_data_error(tmp_path):
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(open(data_path('cat.jpg'), 'rb').read()[:2000])
    with pytest.raises(DataError, match='bad.jpg'):
        CaffePreprocess()(str(bad))
    with pytest.raises(DataError, match='missing.jpg: missing-file'):
        read_image(str(tmp_path / 'missing.jpg'))
    (tmp_path / 'empty.png').write_bytes(b'')  # as the training scan says
    with pytest.raises(DataError, match='empty.png: empty-file$'):
        read_image(str(tmp_path / 'empty.png'))


@pytest.mark.parametrize('orientation,turn', [
    (3, Image.ROTATE_180), (6, Image.ROTATE_90), (8, Image.ROTATE_270)])
def test_exif_rotated_photos_are_read_as_they_are_shown(tmp_path, orientation,
                                                        turn):
    """A phone photo stored turned, with the EXIF Orientation that turns it
    back, gives the input of the upright photo (path or PIL image), as
    OpenCV's imread (Caffe's tools) reads it."""
    upright = Image.open(data_path('cat.jpg')).convert('RGB').resize((120, 90))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / 'phone.jpg')
    upright.transpose(turn).save(path, quality=100, subsampling=0,
                                 exif=exif)
    prep = CaffePreprocess((90, 120), None, None)
    expected = prep(upright)
    for image in (path, Image.open(path)):
        assert np.abs(prep(image) - expected).mean() < 1
    cv2 = pytest.importorskip('cv2')
    shown = cv2.imread(path).transpose(2, 0, 1).astype(np.float32)  # BGR
    assert np.abs(prep(path) - shown).max() <= 2


def test_a_turned_large_jpeg_is_drafted_to_at_least_the_size(tmp_path):
    """Draft mode scales JPEGs down by 2, 4 or 8 while decoding; for a photo
    shown turned the wanted size is turned too."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 4000 wide, 2400 high; shown 2400 x 4000
    path = str(tmp_path / 'tall.jpg')
    Image.new('RGB', (4000, 2400), (90, 90, 90)).save(path, exif=exif)
    img = read_image(path, (100, 1000))  # (H, W): shown 1000 wide at least
    assert img.size == (2000, 1200)  # halved, not quartered
    assert upright(img).size == (1200, 2000)
    assert CaffePreprocess((100, 1000), None, None)(path).shape == (
        3, 100, 1000)
