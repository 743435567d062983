"""BVLC AlexNet and CaffeNet: :class:`~finetune.models.CaffeGraph` s built
from the deploy prototxts shipped in ``zoo/``.

Layer table (input 3x227x227, BGR, 0-255, mean-subtracted)::

    name   type            out   kernel stride pad group  then
    conv1  Convolution      96     11     4     0    1    ReLU, norm1, pool1
    conv2  Convolution     256      5     1     2    2    ReLU, norm2, pool2
    conv3  Convolution     384      3     1     1    1    ReLU
    conv4  Convolution     384      3     1     1    2    ReLU
    conv5  Convolution     256      3     1     1    2    ReLU, pool5
    fc6    InnerProduct   4096                            ReLU, Dropout 0.5
    fc7    InnerProduct   4096                            ReLU, Dropout 0.5
    fc8    InnerProduct   n_classes

norm: LRN across 5 channels, alpha 1e-4 (Caffe's, divided by 5), beta 0.75.
pool: MAX 3x3 stride 2, rounded up as Caffe does. CaffeNet swaps the order
to pool-then-norm.
"""
import os

from finetune.caffe.caffemodel import read_prototxt_param
from finetune.models.caffe_graph import CaffeGraph

#: The weighted layers of both nets, in forward order.
LAYER_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5',
               'fc6', 'fc7', 'fc8')
ZOO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'zoo')
#: BVLC's deploy definitions (fc8: 1000 outputs).
ALEXNET_PROTOTXT = os.path.join(ZOO, 'bvlc_alexnet_deploy.prototxt')
CAFFENET_PROTOTXT = os.path.join(ZOO,
                                 'bvlc_reference_caffenet_deploy.prototxt')


def bvlc_net(prototxt, n_classes=1000, dropout=0.5, initialW=None):
    """The CaffeGraph of a BVLC deploy ``prototxt`` with fc8 sized
    ``n_classes`` and every Dropout's ratio set to ``dropout``."""
    net_param = read_prototxt_param(prototxt)
    for layer in net_param.layer:
        if layer.type == 'Dropout':
            layer.dropout_param.dropout_ratio = dropout
    return CaffeGraph(net_param, n_classes, prototxt, initialW)


def AlexNet(n_classes=1000, dropout=0.5, initialW=None):
    """BVLC AlexNet as a CaffeGraph; ``forward`` maps (N, 3, 227, 227) to
    (N, n_classes) fc8 logits.

    Args:
        n_classes (int): outputs of fc8 (1000 for ImageNet).
        dropout (float): ratio of the fc6/fc7 dropouts in training mode.
        initialW: Chainer initializer of the weights (Chainer's default
            when ``None``; pass ``chainer.initializers.Zero()`` when the
            weights are about to be loaded, to skip drawing 61M randoms).
    """
    return bvlc_net(ALEXNET_PROTOTXT, n_classes, dropout, initialW)


def CaffeNet(n_classes=1000, dropout=0.5, initialW=None):
    """BVLC CaffeNet (AlexNet with each pooling before its normalization)
    as a CaffeGraph; arguments as :func:`AlexNet`."""
    return bvlc_net(CAFFENET_PROTOTXT, n_classes, dropout, initialW)
