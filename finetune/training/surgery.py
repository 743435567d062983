"""Network surgery for fine-tuning: freeze layers, replace the head.

Layers are named by layer specs (:mod:`finetune.training.layer_spec`);
``--replace`` defaults to ``auto``, the layers :func:`default_head` names.
"""
import chainer
import numpy

from finetune.models.alexnet import LAYER_NAMES as BVLC_LAYER_NAMES
from finetune.models.caffe_graph import CaffeBatchNorm
from finetune.models.model_file import build_model
from finetune.models.opencv_runner import select_engine
from finetune.common.errors import FinetuneError
from finetune.training.layer_spec import parse_layer_spec

#: what ``--replace auto`` retrains on BVLC AlexNet and CaffeNet
BVLC_HEAD = 'fc6-fc8'


def default_head(model):
    """The layer spec ``--replace auto`` stands for on ``model``:
    ``fc6-fc8`` on a net of BVLC AlexNet's or CaffeNet's layers (whatever
    its file is called), else its classifier, the last InnerProduct (the
    last Convolution in a net without one, such as SqueezeNet's
    ``conv10``); ``none`` when it has neither. (A registry entry may name
    another head: :mod:`finetune.weights.registry`.)
    """
    if tuple(model.layer_names) == BVLC_LAYER_NAMES:
        return BVLC_HEAD
    return model.classifier_name or 'none'


def parse_head_spec(spec, model, entry=None):
    """:func:`parse_layer_spec` of a ``--replace`` value, ``auto`` being
    the ``head`` of the registry ``entry`` the weights come from
    (:class:`~finetune.weights.registry.PretrainedModel`, e.g. AlexNet's
    ``fc6-fc8``) when it names one, else :func:`default_head`."""
    if (spec or '').strip() == 'auto':
        spec = entry.head if entry is not None and entry.head != 'auto' \
            else default_head(model)
    return parse_layer_spec(spec, model)


def check_freeze_set(model, frozen):
    """Refuse a freeze set where a trained layer feeds a frozen one (its
    gradient would flow through frozen weights into a layer that moves,
    which no fine-tuning recipe means).

    Raises:
        FinetuneError: naming both layers.
    """
    frozen = set(frozen)
    feeds = model.feeds(weighted=True)
    for name in model.layer_names:
        if name not in frozen:
            continue
        for source in feeds[name]:
            if source not in frozen:
                raise FinetuneError(
                    '--freeze: %s is trained but feeds the frozen %s; '
                    'freeze %s too, or freeze a range that ends before %s'
                    % (source, name, source, source))


def frozen_prefix(layer_names, frozen):
    """How many leading layers are all in ``frozen``.

    ``layer_names[:k]`` can run under ``chainer.no_backprop_mode()`` (no
    graph, no activations kept, no backward), which :class:`FineTuneNet`
    does. Frozen layers after the prefix still pass gradients back.
    """
    prefix = 0
    for name in layer_names:
        if name not in frozen:
            break
        prefix += 1
    return prefix


def frozen_cut(model, frozen):
    """The leading layers that run without a graph: :func:`frozen_prefix`,
    lowered to the nearest cut one blob crosses (where ``forward(x,
    stop=k)`` can hand over to ``forward(h, start=k)``)."""
    prefix = frozen_prefix(model.layer_names, frozen)
    return max(k for k in model.valid_cuts() if k <= prefix)


def freeze_layers(model, names):
    """Stop the optimizer from updating the layers ``names``.

    Call after ``optimizer.setup(model)``: Chainer's ``disable_update``
    flags the update rules the optimizer creates, so freezing before the
    set-up would be silently undone.

    Raises:
        ValueError: a parameter has no update rule yet.
    """
    for name in names:
        for param in model[name].params():
            if param.update_rule is None:
                raise ValueError('freeze_layers before optimizer.setup: %s '
                                 'would still be trained' % name)
        model[name].disable_update()


def replace_head(pretrained, meta, names, n_classes):
    """A copy of ``pretrained`` with ``names`` newly initialized.

    Args:
        pretrained: the network with the imported weights.
        meta (dict): its metadata (architecture, prototxt).
        names (list of str): layers to re-initialize; must include the
            last layer when ``n_classes`` differs from the pretrained one.
        n_classes (int): outputs of the new last layer.

    Returns:
        A new network of the same architecture whose other layers hold
        copies of the pretrained weights. A re-initialized BatchNorm has no
        statistics to keep, so it trains on batch statistics and updates
        them as Caffe's TRAIN phase does, even where the deploy prototxt
        says ``use_global_stats: true`` (as deploy files do).
    """
    last = pretrained.layer_names[-1]
    if n_classes != pretrained.n_classes and last not in names:
        raise FinetuneError('the data has %d classes but %s has %d outputs: '
                            'replace %s (e.g. --replace %s)'
                            % (n_classes, last, pretrained.n_classes, last,
                               last))
    model = build_model(dict(meta, n_classes=n_classes))
    for name in pretrained.layer_names:
        if name not in names:
            # persistents too: BatchNorm's stored mean and variance
            model[name].copyparams(pretrained[name], copy_persistent=True)
        elif isinstance(model[name], CaffeBatchNorm):
            model[name].use_global_stats = False
            model[name].keep_statistics = False
    return model


def set_param_dtype(link, dtype):
    """Cast every parameter of ``link`` to ``dtype`` in place (e.g.
    float16 for mixed-precision training, float32 afterwards). Call before
    ``optimizer.setup``: update rules keep their states' dtype."""
    for param in link.params():
        if param.array is not None and param.dtype != dtype:
            param.array = param.array.astype(dtype)


def _cast(x, dtype):
    """``x`` (array or Variable) as ``dtype``; unchanged when it is."""
    if getattr(x, 'dtype', None) == dtype:
        return x
    return chainer.functions.cast(x, dtype)


class FineTuneNet(chainer.Chain):
    """The network with its frozen prefix run without a graph.

    ``forward(x)`` runs ``layer_names[:n_frozen_layers]`` under
    ``chainer.no_backprop_mode()`` (no backward, no stored activations) and
    the rest normally; outputs are logits (N, n_classes). Layers
    ``[n_frozen_layers, graph_start)`` also run without a graph (a head
    warm-up, :class:`~finetune.training.recipe.Unfreeze`; ``graph_start``
    is ``n_frozen_layers`` otherwise). With
    ``from_features`` the input is already the frozen prefix's output
    (cached features) and only the rest runs. Inputs (float32 images or
    features) are cast to the parameters' dtype, so the same data feeds a
    float16 network.

    Args:
        net: the CaffeGraph.
        n_frozen_layers (int): how many leading ``layer_names`` run
            without a graph (a cut of ``net``, :func:`frozen_cut`).
        from_features (bool): inputs are that prefix's outputs.
        trunk_backend (str): where the prefix runs on the CPU, one of
            :data:`finetune.models.opencv_runner.ENGINES`.
    """

    def __init__(self, net, n_frozen_layers, from_features=False,
                 trunk_backend='auto'):
        super().__init__()
        self.n_frozen_layers = n_frozen_layers
        self.from_features = from_features
        self.trunk_backend = trunk_backend
        self.graph_start = n_frozen_layers
        self._fast_trunk = None
        with self.init_scope():
            self.net = net

    def features(self, x):
        """Output of the frozen prefix (no graph).

        On the CPU with ``trunk_backend`` 'auto' or 'opencv' the prefix runs
        on OpenCV's dnn (:mod:`finetune.models.opencv_runner`), the same
        arithmetic several times faster; dropout inside a frozen prefix is
        then off, as in Caffe's feature extraction.
        """
        fast = self._trunk_runner()
        if fast is not None:
            h = fast(chainer.backend.CpuDevice().send(getattr(x, 'array', x)))
            return chainer.Variable(h.astype(self.dtype, copy=False),
                                    requires_grad=False)
        with chainer.no_backprop_mode():
            h = self.net.forward(_cast(x, self.dtype),
                                 stop=self.n_frozen_layers)
        # a leaf that needs no gradient: the first trained layer then skips
        # computing one for its input
        return chainer.Variable(h.array, requires_grad=False)

    def _trunk_runner(self):
        """The OpenCV runner of the frozen prefix, built on first use (after
        any snapshot has been loaded); None for Chainer's path."""
        if self.xp is not numpy:
            return None
        if self._fast_trunk is None:
            self._fast_trunk = select_engine(
                self.net, self.trunk_backend, self.n_frozen_layers,
                option='--trunk-backend') or False
        return self._fast_trunk or None

    @property
    def dtype(self):
        """The parameters' dtype (float32, or float16 with --dtype)."""
        return next(self.net.params()).dtype

    def forward(self, x):
        h = self.features(x) if self.n_frozen_layers and \
            not self.from_features else _cast(x, self.dtype)
        start = self.n_frozen_layers
        if self.graph_start > start:
            with chainer.no_backprop_mode():
                h = self.net.forward(h, start=start, stop=self.graph_start)
            h = chainer.Variable(h.array, requires_grad=False)
            start = self.graph_start
        return self.net.forward(h, start=start)


def build_networks(pretrained, meta, head, frozen, n_classes,
                   from_features=False, trunk_backend='auto'):
    """(train_net, eval_net): FineTuneNets sharing one network after
    surgery. The training net reads cached features when
    ``from_features`` (``--cache-features``); a frozen trunk is always
    evaluated on cached centre-crop features (``eval_net`` reads
    features), else ``eval_net`` is ``train_net``. ``trunk_backend``
    (``--trunk-backend``) chooses what runs the frozen trunk on the CPU."""
    net = replace_head(pretrained, meta, head, n_classes)
    prefix = frozen_cut(net, frozen)
    train_net = FineTuneNet(net, prefix, from_features=from_features,
                            trunk_backend=trunk_backend)
    if not prefix:
        return train_net, train_net
    return train_net, FineTuneNet(net, prefix, from_features=True,
                                  trunk_backend=trunk_backend)
