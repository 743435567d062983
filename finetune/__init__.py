"""finetune: Caffe AlexNet weights in Chainer, fine-tuned on your classes.

Three lines classify with a saved model::

    import finetune
    model = finetune.load('result/model_best.npz')
    labels, probs = model.predict(['photo.jpg'])
"""
from finetune.common import gpu as _gpu  # CUDA libraries installed from pip must be loaded before chainer decides,
# at its import, whether CuPy is usable (a no-op without CuPy).
_gpu.preload_at_import()

from finetune.common.errors import FinetuneError  # NOQA
from finetune.inference.predictor import load  # NOQA
from finetune.inference.predictor import Predictor  # NOQA

__version__ = '0.1.0'
