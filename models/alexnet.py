"""BVLC AlexNet and CaffeNet in Caffe's exact layout.

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
import chainer
import chainer.functions as F
import chainer.links as L

from finetune.models.cpu_kernels import call_link
from finetune.models.functions import caffe_lrn
from finetune.models.functions import caffe_pooling_2d

LAYER_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5',
               'fc6', 'fc7', 'fc8')


def _norm(h):
    return caffe_lrn(h, local_size=5, alpha=1e-4, beta=0.75)


def _pool(h):
    return caffe_pooling_2d(h, 'max', (3, 3), (2, 2), (0, 0))


def _no_grads(link):
    """``link`` with its gradient arrays freed: Chainer fills a NaN array
    per parameter, which backward makes again anyway; freed link by link,
    building AlexNet costs its 233 MB of weights instead of twice that."""
    link.cleargrads()
    return link


class AlexNet(chainer.Chain):
    """BVLC AlexNet; ``__call__`` maps (N, 3, 227, 227) to fc8 logits.

    Args:
        n_classes (int): outputs of fc8 (1000 for ImageNet).
        dropout (float): ratio of the fc6/fc7 dropouts in training mode.
        initialW: Chainer initializer of the weights (Chainer's default
            when ``None``; pass ``chainer.initializers.Zero()`` when the
            weights are about to be loaded, to skip drawing 61M randoms).
    """

    layer_names = LAYER_NAMES
    pool_before_norm = False
    arch = 'alexnet'

    def __init__(self, n_classes=1000, dropout=0.5, initialW=None):
        super().__init__()
        self.n_classes = n_classes
        self.dropout = dropout
        with self.init_scope():
            w = dict(initialW=initialW)
            self.conv1 = _no_grads(L.Convolution2D(3, 96, 11, stride=4, **w))
            self.conv2 = _no_grads(L.Convolution2D(96, 256, 5, pad=2,
                                                   groups=2, **w))
            self.conv3 = _no_grads(L.Convolution2D(256, 384, 3, pad=1, **w))
            self.conv4 = _no_grads(L.Convolution2D(384, 384, 3, pad=1,
                                                   groups=2, **w))
            self.conv5 = _no_grads(L.Convolution2D(384, 256, 3, pad=1,
                                                   groups=2, **w))
            self.fc6 = _no_grads(L.Linear(256 * 6 * 6, 4096, **w))
            self.fc7 = _no_grads(L.Linear(4096, 4096, **w))
            self.fc8 = _no_grads(L.Linear(4096, n_classes, **w))

    def _norm_pool(self, h):
        if self.pool_before_norm:
            return _norm(_pool(h))
        return _pool(_norm(h))

    def stage(self, name, h):
        """Run layer ``name`` and the parameter-free ops that follow it."""
        h = call_link(self[name], h)
        if name == 'fc8':
            return h
        h = F.relu(h)
        if name in ('conv1', 'conv2'):
            return self._norm_pool(h)
        if name == 'conv5':
            return _pool(h)
        if name in ('fc6', 'fc7'):
            return F.dropout(h, self.dropout)
        return h

    def definition(self):
        """BVLC's deploy prototxt text for this net (fc8 sized n_classes)."""
        return deploy_prototxt(self.n_classes, self.pool_before_norm)

    def forward(self, x, start=None, stop=None):
        """Run the stages ``layer_names[start:stop]`` (default: all).

        ``forward(x)`` maps (N, 3, 227, 227) images to (N, n_classes)
        logits; ``forward(x, stop='fc6')`` gives pool5 features
        (N, 256, 6, 6); ``forward(h, start='fc6')`` continues from them.
        """
        for name in stage_slice(self.layer_names, start, stop):
            x = self.stage(name, x)
        return x


_CONVS = (  # name, outputs, kernel, stride, pad, group
    ('conv1', 96, 11, 4, 0, 1), ('conv2', 256, 5, 1, 2, 2),
    ('conv3', 384, 3, 1, 1, 1), ('conv4', 384, 3, 1, 1, 2),
    ('conv5', 256, 3, 1, 1, 2))
_POOL = 'pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
_NORM = 'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'


def _layer(name, kind, bottom, top, params=''):
    return ('layer { name: "%s" type: "%s" bottom: "%s" top: "%s" %s }\n'
            % (name, kind, bottom, top, params))


def deploy_prototxt(n_classes=1000, pool_before_norm=False):
    """The deploy definition of AlexNet (or CaffeNet) as prototxt text.

    Same layers, names and parameters as BVLC's models/bvlc_alexnet/
    deploy.prototxt (CaffeNet: each pooling before its normalization).
    """
    text = ['name: "%s"\n' % ('CaffeNet' if pool_before_norm else 'AlexNet'),
            'layer { name: "data" type: "Input" top: "data" input_param '
            '{ shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }\n']
    bottom = 'data'
    for name, out, kernel, stride, pad, group in _CONVS:
        i = name[-1]
        text.append(_layer(name, 'Convolution', bottom, name,
                           'convolution_param { num_output: %d kernel_size:'
                           ' %d%s%s%s }'
                           % (out, kernel,
                              ' stride: %d' % stride if stride > 1 else '',
                              ' pad: %d' % pad if pad else '',
                              ' group: %d' % group if group > 1 else '')))
        text.append(_layer('relu' + i, 'ReLU', name, name))
        bottom = name
        if i in '12':
            pool = ('pool' + i, 'Pooling', _POOL)
            norm = ('norm' + i, 'LRN', _NORM)
            for top, kind, params in ((pool, norm) if pool_before_norm
                                      else (norm, pool)):
                text.append(_layer(top, kind, bottom, top, params))
                bottom = top
        elif i == '5':
            text.append(_layer('pool5', 'Pooling', name, 'pool5', _POOL))
            bottom = 'pool5'
    for name, out in (('fc6', 4096), ('fc7', 4096), ('fc8', n_classes)):
        text.append(_layer(name, 'InnerProduct', bottom, name,
                           'inner_product_param { num_output: %d }' % out))
        if name != 'fc8':
            i = name[-1]
            text.append(_layer('relu' + i, 'ReLU', name, name))
            text.append(_layer('drop' + i, 'Dropout', name, name,
                               'dropout_param { dropout_ratio: 0.5 }'))
        bottom = name
    text.append(_layer('prob', 'Softmax', 'fc8', 'prob'))
    return ''.join(text)


def stage_slice(names, start, stop):
    """``names[start:stop]`` where start/stop may be names or indices."""
    start = names.index(start) if isinstance(start, str) else start
    stop = names.index(stop) if isinstance(stop, str) else stop
    return names[start:stop]


class CaffeNet(AlexNet):
    """BVLC CaffeNet: AlexNet with each pooling before its normalization."""

    pool_before_norm = True
    arch = 'caffenet'
