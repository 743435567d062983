"""finetune: pretrained Caffe nets in Chainer, fine-tuned on your classes.

Three lines classify with a saved model::

    import finetune
    model = finetune.load('result/model_best.npz')
    labels, probs = model.predict(['photo.jpg'])

A pretrained net by registry name, with its preprocessing and class
names (:mod:`finetune.weights`)::

    nsfw = finetune.pretrained('open_nsfw')
    logits = nsfw.net(nsfw.preprocess('photo.jpg')[None])

Training from Python::

    result = finetune.fit(finetune.TrainConfig(data='photos/',
                                               freeze='conv1-conv5'))

``import finetune`` is light: chainer is imported when ``load``,
``Predictor``, ``fit`` or ``pretrained(...)`` is first used (PEP 562), so
``fetch`` and ``gather`` start without it; a ``TrainConfig`` is made and
checked without it.
"""
from finetune.common import gpu as _gpu
from finetune.common import lazy_attributes
from finetune.common.errors import FinetuneError  # NOQA: F401 (public)

# CUDA libraries installed from pip must be loaded before chainer decides,
# at its import, whether CuPy is usable. Every finetune module is imported
# through this package, so this runs before any of them imports chainer
# (a no-op without CuPy; it imports neither chainer nor CuPy).
_gpu.preload_at_import()

__version__ = '0.1.0'

__getattr__, __dir__ = lazy_attributes(__name__, {
    'load': 'finetune.inference.predictor',
    'Predictor': 'finetune.inference.predictor',
    'fit': 'finetune.training.fit',
    'FitResult': 'finetune.training.fit',
    'TrainConfig': 'finetune.training.config',
    'pretrained': 'finetune.weights.load',
    'PretrainedNet': 'finetune.weights.load'})
