"""Network definitions: Caffe AlexNet/CaffeNet and nets from a prototxt."""
from finetune.models.alexnet import AlexNet  # NOQA
from finetune.models.alexnet import CaffeNet  # NOQA
from finetune.models.caffe_graph import CaffeGraph  # NOQA
