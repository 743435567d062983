"""Data files shipped with finetune (see NOTICE for their origin)."""
import os

import numpy as np

RESOURCE_DIR = os.path.dirname(__file__)


def imagenet_class_names():
    """The 1,000 ILSVRC-2012 class names in Caffe's label order."""
    with open(os.path.join(RESOURCE_DIR, 'imagenet_classes.txt')) as f:
        return [line.rstrip('\n') for line in f]


def imagenet_mean():
    """ImageNet mean image: float32 (3, 256, 256), BGR, 0-255."""
    return np.load(os.path.join(RESOURCE_DIR, 'ilsvrc_2012_mean.npy')
                   ).astype(np.float32)
