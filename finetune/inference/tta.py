"""Caffe's 10-crop test-time augmentation (``caffe.io.oversample``).

Each image is resized as for a single crop, then cut into its four corner
crops and its centre crop, and the horizontal mirrors of those five; the
network's softmax probabilities of the ten are averaged, as
``caffe.Classifier.predict(images, oversample=True)`` does.
"""
import numpy as np

#: crops per image
N_CROPS = 10


def crops_problem(preprocess):
    """Why ``preprocess`` has no ten crops to average (None when it has):
    a model that takes whole images (no crop size), or a crop larger than
    the resized image."""
    if preprocess.crop_size is None:
        return ('this model takes whole images (no crop size), there are '
                'no crops to average')
    if preprocess.crop_size > min(preprocess.size):
        return ('the %d-pixel crops do not fit in the %dx%d resized image'
                % ((preprocess.crop_size,) + tuple(preprocess.size)))
    return None


def crop_windows(size, crop_size):
    """The five (top, left) windows of ``caffe.io.oversample``, in its
    order: top-left, top-right, bottom-left, bottom-right corners, then the
    centre (``int(H / 2 - crop / 2)``, as Caffe truncates it).

    Args:
        size (tuple): (H, W) of the resized image.
        crop_size (int): side of the square crops.
    """
    height, width = size
    corners = [(top, left) for top in (0, height - crop_size)
               for left in (0, width - crop_size)]
    centre = (int(height / 2.0 - crop_size / 2.0),
              int(width / 2.0 - crop_size / 2.0))
    return corners + [centre]


def oversample(array, crop_size):
    """The ten crops of one resized image.

    Args:
        array (numpy.ndarray): float32 (C, H, W), mean subtracted and scaled
            (:meth:`CaffePreprocess.image_array`).
        crop_size (int): side of the crops.

    Returns:
        numpy.ndarray: float32 (10, C, crop_size, crop_size): the five
        windows of :func:`crop_windows`, then their mirrors (width
        reversed) in the same order.
    """
    crops = np.stack([array[:, top:top + crop_size, left:left + crop_size]
                      for top, left in crop_windows(array.shape[1:],
                                                    crop_size)])
    return np.ascontiguousarray(np.concatenate([crops,
                                                crops[:, :, :, ::-1]]))


def mean_over_crops(probs):
    """(N, n_classes) means of (N * 10, n_classes) probabilities, each
    image's ten crops in consecutive rows."""
    return probs.reshape(-1, N_CROPS, probs.shape[-1]).mean(axis=1)


class OversamplePreprocess:
    """The transform of a :class:`CaffePreprocess` with 10-crop TTA: path
    or PIL image -> float32 (10, C, crop, crop).

    Args:
        preprocess (CaffePreprocess): its resize, mean, scale and crop size
            (which must not be None).
    """

    def __init__(self, preprocess):
        problem = crops_problem(preprocess)
        if problem:
            raise ValueError('test-time augmentation: %s' % problem)
        self.preprocess = preprocess

    def __call__(self, img):
        return oversample(self.preprocess.image_array(img),
                          self.preprocess.crop_size)

    @property
    def input_shape(self):
        """(10, C, crop, crop)."""
        return (N_CROPS,) + self.preprocess.input_shape
