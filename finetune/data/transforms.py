"""Caffe's classic preprocessing, the one transform used everywhere.

An image becomes a network input in these steps, as Caffe's data layers do:

1. decode (any PIL mode: gray, RGBA, CMYK, palette, 16-bit) to RGB, or to
   gray for one-channel nets, turned as it is shown (EXIF Orientation, as
   OpenCV's ``imread`` in Caffe's tools does);
2. float32 in 0-255, channels reordered to BGR, HWC -> CHW;
3. resize to ``size`` (256x256 for AlexNet), ignoring aspect ratio;
4. subtract the mean (a CxHxW mean image or a per-channel mean pixel);
5. multiply by ``scale`` (1 for AlexNet, 1/256 for Caffe's LeNet);
6. crop ``crop_size`` (center for evaluation; random crop and mirror for
   training).

:func:`to_array` and :func:`from_array` convert between PIL images and the
CHW arrays of step 2, for viewing inputs and mean images.
"""
import numpy as np
from PIL import Image
from PIL import ImageOps

from finetune.common.errors import DataError
from finetune.data.images import file_problem
from finetune.data.images import open_decoded
from finetune.data.images import problem_of_exception
from finetune.data.images import unsupported_mode

# ImageNet mean pixel, BGR, 0-255 (the ilsvrc_2012_mean image averaged).
IMAGENET_MEAN_PIXEL = (104.0, 117.0, 123.0)
EXIF_ORIENTATION = 0x0112
#: EXIF orientations whose display swaps width and height
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def orientation(img):
    """The EXIF Orientation of ``img`` (1: stored as shown)."""
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block: shown as stored
        return 1


def upright(img):
    """``img`` turned as it is shown: phone cameras store a photo as the
    sensor saw it and tag how to turn it (EXIF Orientation); the tag is
    dropped, so turning twice is impossible."""
    return img if orientation(img) == 1 else ImageOps.exif_transpose(img)


#: PIL modes of 16 and 32 bits per pixel, scaled to 8 bits
DEEP_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')
#: PIL modes with an alpha channel, composited on white
ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'PA')
#: PIL modes whose conversion to RGB and gray PIL does right
PLAIN_MODES = ('1', 'L', 'P', 'RGB', 'RGBX', 'CMYK', 'YCbCr', 'HSV')


def _to_8bit_rgb_or_gray(img, channels):
    """``img`` as 8-bit RGB (``channels`` 3) or L (1): transparency (an
    alpha band, a palette's transparent entry) composited on white, the
    same for both, so a gray net sees the luminance of what an RGB net
    sees.

    Raises:
        DataError: ``undecodable: <mode> images are not supported`` for
            modes PIL cannot convert correctly (LAB, La, ...).
    """
    if img.mode in DEEP_MODES:
        array = np.asarray(img, dtype=np.float64)
        finite = array[np.isfinite(array)]  # F images may hold NaN, Inf
        top = float(finite.max()) if finite.size else 0.0
        peak = 65535.0 if img.mode.startswith('I;16') else max(top, 1.0)
        if img.mode == 'I' and top <= 255:
            peak = 255.0
        array = np.nan_to_num(array, nan=0.0, posinf=peak, neginf=0.0)
        img = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255)
                              .astype(np.uint8))
    elif img.mode not in ALPHA_MODES + PLAIN_MODES:
        raise DataError(unsupported_mode(img.mode))
    if img.mode in ALPHA_MODES or (img.mode == 'P' and
                                   'transparency' in img.info):
        img = img.convert('RGBA')
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img).convert('RGB')
    mode = 'RGB' if channels == 3 else 'L'
    return img if img.mode == mode else img.convert(mode)


def to_array(img, channels=3):
    """PIL image -> float32 array (C, H, W), 0-255, BGR for 3 channels.

    Transparent pixels are composited on white; 16-bit and 32-bit images
    are scaled to 0-255.
    """
    img = _to_8bit_rgb_or_gray(img, channels)
    array = np.asarray(img, dtype=np.float32)
    if channels == 1:
        return array[np.newaxis]
    return np.ascontiguousarray(array[:, :, ::-1].transpose(2, 0, 1))


def from_array(array):
    """float array (C, H, W), BGR or gray, 0-255 -> PIL image (for viewing).

    Values are clipped to 0-255; add the mean back first to view a
    mean-subtracted input.
    """
    array = np.asarray(array)
    array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0], 'L')
    return Image.fromarray(np.ascontiguousarray(
        array[::-1].transpose(1, 2, 0)), 'RGB')


def read_image(path, size=None):
    """Open and fully decode an image file.

    JPEGs much larger than ``size`` (H, W) are decoded at a reduced scale
    with PIL's draft mode (DCT scaling), several times faster; the result
    is still at least ``size``.

    Raises:
        DataError: ``'<path>: <problem>'`` with a code of
            :data:`finetune.data.images.PROBLEMS`.
    """
    problem = file_problem(path)
    if problem:  # a FIFO is never opened: opening it waits for a writer
        raise DataError('%s: %s' % (path, problem))
    try:
        img = Image.open(path)
        if size is not None and img.format == 'JPEG':
            turned = orientation(img) in TRANSPOSED_ORIENTATIONS
            img.draft(img.mode, tuple(size) if turned else (size[1],
                                                            size[0]))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) \
            as e:
        problem = problem_of_exception(e)
        raise DataError('%s: %s' % (path, problem)) from None
    return img


class CaffePreprocess:
    """Turn a PIL image (or a path) into a network input (C, crop, crop).

    Args:
        size (tuple): (H, W) the image is resized to, e.g. (256, 256).
        crop_size (int): side of the square crop, e.g. 227; ``None`` for
            no crop.
        mean (numpy.ndarray or sequence or None): CxHxW mean image in the
            resized geometry (resized if its H, W differ) or a per-channel
            mean pixel, in the same channel order and 0-255 units.
        scale (float): multiplier applied after mean subtraction.
        channels (int): 3 (BGR) or 1 (gray).
    """

    def __init__(self, size=(256, 256), crop_size=227,
                 mean=IMAGENET_MEAN_PIXEL, scale=1.0, channels=3):
        self.size = tuple(size)
        self.crop_size = crop_size
        self.scale = scale
        self.channels = channels
        self.mean = self._mean_array(mean)

    def _mean_array(self, mean):
        if mean is None:
            return np.zeros((self.channels, 1, 1), np.float32)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            return mean.reshape(-1, 1, 1)
        if mean.shape[1:] not in ((1, 1), self.size):
            mean = np.stack([np.asarray(Image.fromarray(c).resize(
                self.size[::-1], Image.BILINEAR)) for c in mean])
        return mean.astype(np.float32)

    def image_array(self, img):
        """Steps 1-5: mean-subtracted, scaled float32 (C, H, W) at ``size``."""
        path = None
        if not isinstance(img, Image.Image):
            path, img = img, read_image(img, self.size)
        try:
            img = _to_8bit_rgb_or_gray(upright(img), self.channels)
        except DataError as e:
            if path is None:
                raise
            raise DataError('%s: %s' % (path, e)) from None
        if img.size != self.size[::-1]:
            img = img.resize(self.size[::-1], Image.BILINEAR)
        array = to_array(img, self.channels)
        array -= self.mean
        if self.scale != 1:
            array *= self.scale
        return array

    def crop_window(self, train=False, rng=None):
        """(top, left, mirrored) of a crop of the resized image: the
        center one, or when training a uniformly random one, mirrored with
        probability 1/2 (drawn from ``rng``, default NumPy's global one).
        ``None`` when there is no crop."""
        if self.crop_size is None:
            return None
        height, width = self.size
        side = self.crop_size
        if not train:
            return (height - side) // 2, (width - side) // 2, False
        rng = rng or np.random
        top = rng.randint(0, height - side + 1)
        left = rng.randint(0, width - side + 1)
        return top, left, bool(rng.randint(2))

    def crop(self, array, train=False, rng=None, window=None):
        """Step 6: center crop, or random crop and mirror when training
        (see :meth:`crop_window`); or the given ``window``."""
        window = window or self.crop_window(train, rng)
        if window is None:
            return array
        top, left, mirrored = window
        side = self.crop_size
        array = array[:, top:top + side, left:left + side]
        return np.ascontiguousarray(array[:, :, ::-1] if mirrored else array)

    def __call__(self, img, train=False, rng=None):
        """PIL image or path -> float32 (C, crop_size, crop_size)."""
        return self.crop(self.image_array(img), train, rng)

    @property
    def input_shape(self):
        """(C, H, W) of the arrays this transform returns."""
        side = self.crop_size
        return (self.channels,) + ((side, side) if side else self.size)


def check_image(path, channels=3):
    """Why the image at ``path`` cannot be used, or ``None`` if it can.

    Opens and fully decodes the file (truncated files are errors), then
    converts it the way :class:`CaffePreprocess` does.

    Returns:
        str or None: a code of :data:`finetune.data.images.PROBLEMS`
        (``undecodable`` with
        PIL's message after ``': '``).
    """
    problem = file_problem(path)
    if problem:
        return problem
    try:
        with open_decoded(path) as img:
            CaffePreprocess(size=(4, 4), crop_size=None, mean=None,
                            channels=channels).image_array(img)
    except DataError as e:  # a problem code already: a mode not supported
        return str(e)
    except Exception as e:  # PIL raises many types for corrupt data
        return problem_of_exception(e)
    return None
