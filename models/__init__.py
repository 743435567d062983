"""Networks and model files: Caffe AlexNet/CaffeNet, nets from a prototxt,
model files with their metadata, the OpenCV runner, the pretrained registry.

The networks load chainer when first used (PEP 562), so importing
:mod:`finetune.models.registry` stays light.
"""
import importlib

_LAZY = {'AlexNet': 'finetune.models.alexnet',
         'CaffeNet': 'finetune.models.alexnet',
         'CaffeGraph': 'finetune.models.caffe_graph'}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
