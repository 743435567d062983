"""Random-weight caffemodels in a real net's layout: the stand-ins that
tests, examples and benchmarks use where the real weights cannot be
downloaded (the results then mean nothing; the file layout is exact)."""
import os

import chainer
import numpy as np

from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.writer import random_weights
from finetune.caffe.writer import write_caffemodel
from finetune.weights.registry import ZOO

#: BVLC AlexNet's deploy definition, shipped with the registry.
ALEXNET_DEPLOY = os.path.join(ZOO, 'bvlc_alexnet_deploy.prototxt')


def write_random_caffemodel(prototxt, path, seed=0, v1=False, model=None,
                            first_layer_scale=None):
    """Write random weights for the deploy net ``prototxt`` as a caffemodel.

    Args:
        prototxt (str): deploy definition (a path), written into the file.
        path (str): the .caffemodel to write (folders created).
        seed (int): seed of the weights (see
            :func:`finetune.caffe.writer.random_weights`).
        v1 (bool): write the old V1 (``layers``) format, as BVLC's
            released caffemodels are.
        model: a Chain whose links are named like the prototxt's layers
            (only their shapes are used); default: the prototxt's
            :class:`~finetune.models.CaffeGraph`.
        first_layer_scale (float or None): multiply the first weighted
            layer's weights by this, e.g. 0.01 so that 0-255 inputs give
            activations near 1 as a trained net's do.

    Returns:
        dict: layer name -> the Caffe blobs (float32 arrays) written.
    """
    net_param = read_prototxt_param(prototxt)
    if model is None:
        from finetune.models import CaffeGraph
        model = CaffeGraph(net_param, source=prototxt,
                           initialW=chainer.initializers.Zero())
        net_param = model.net_param
    weights = random_weights(model, np.random.RandomState(seed))
    if first_layer_scale is not None:
        weights[model.layer_names[0]][0] *= first_layer_scale
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_caffemodel(path, net_param, weights, v1=v1)
    return weights


def write_random_alexnet(path, seed=0, v1=True, first_layer_scale=0.01):
    """A BVLC-layout AlexNet caffemodel (V1 by default) with random weights;
    returns the weights (see :func:`write_random_caffemodel`)."""
    return write_random_caffemodel(ALEXNET_DEPLOY, path, seed, v1,
                                   first_layer_scale=first_layer_scale)
