"""Networks and model files: the one network type, a CaffeGraph built from
a deploy prototxt (``AlexNet()``/``CaffeNet()`` build BVLC's from
``zoo/``), model files with their metadata, the OpenCV runner, and the
deploy prototxts of the pretrained registry (``zoo/``).

The networks load chainer when first used (PEP 562).
"""
from finetune.common import lazy_attributes

__getattr__, __dir__ = lazy_attributes(__name__, {
    'AlexNet': 'finetune.models.alexnet',
    'CaffeNet': 'finetune.models.alexnet',
    'CaffeGraph': 'finetune.models.caffe_graph'})
