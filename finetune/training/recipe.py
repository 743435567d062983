"""Deeper fine-tuning after a head warm-up (``--unfreeze LAYER``).

As fastai's ``fine_tune`` and Keras' transfer-learning guide: for the first
``--warmup-epochs`` only the new head trains (the pretrained trunk is
frozen); then the trunk from ``LAYER`` on trains as well, at ``--lr`` x
``--trunk-lr-mult`` (times Caffe's multipliers), while the layers before
``LAYER`` stay frozen for the whole run (they run without a graph, and
their features can be cached with ``--cache-features``). The options
that do not go together are refused by
:func:`finetune.training.config.check_recipe`, before anything is read.

During the warm-up the trunk layers run under ``no_backprop_mode`` too
(:attr:`~finetune.training.surgery.FineTuneNet.graph_start`) and their
updates are disabled (Chainer's ``disable_update``); :class:`Unfreeze`
enables them when the epoch count reaches the warm-up, from the state a
snapshot restores, so a run resumed after the unfreeze resumes unfrozen.
A pretrained BatchNorm keeps its stored statistics throughout (deploy
prototxts say ``use_global_stats: true``); its Scale layer trains.
"""
from chainer.training import extension

from finetune.common.errors import FinetuneError
from finetune.training.surgery import check_freeze_set
from finetune.training.surgery import frozen_cut
from finetune.training.surgery import parse_head_spec
from finetune.training.layer_spec import parse_layer_spec


def frozen_before(network, layer):
    """The weighted layers before ``layer`` in network order (frozen for
    the whole run with ``--unfreeze layer``).

    Raises:
        FinetuneError: ``--unfreeze``: an unknown layer, or the first one
            (nothing would stay frozen: use ``--freeze none``).
    """
    try:
        upto = parse_layer_spec('up-to:%s' % layer, network)
    except FinetuneError as e:
        raise FinetuneError('--unfreeze: %s' % e) from None
    frozen = [name for name in upto if name != layer]
    if not frozen:
        raise FinetuneError('--unfreeze %s: the first layer, nothing would '
                            'stay frozen (to train every layer from the '
                            'start: --freeze none)' % layer)
    return frozen


def trunk_layers(network, head, frozen):
    """The pretrained layers that train after the warm-up: neither the new
    head nor frozen, in network order."""
    return [name for name in network.layer_names
            if name not in head and name not in frozen]


def scale_trunk_rates(network, trunk, mult):
    """Multiply the rate multipliers of ``trunk``'s parameters by
    ``mult`` (after :func:`~finetune.training.solver.set_caffe_lr_policy`,
    which leaves the trunk's weights at x1 and biases at x2)."""
    for name in trunk:
        for param in network[name].params():
            param.update_rule.lr_mult *= mult


class Unfreeze(extension.Extension):
    """Trains ``trunk`` from epoch ``warmup_epochs`` on.

    Before it, the trunk's updates are disabled and ``net`` runs it without
    a graph (``net.graph_start`` past it); once ``updater.epoch`` reaches
    ``warmup_epochs`` (checked after every iteration and when training
    starts, so also right after a snapshot is loaded) the updates are
    enabled and the graph starts at the frozen prefix again.

    Args:
        net (FineTuneNet): the training network.
        frozen (list of str): the layers frozen for the whole run.
        trunk (list of str): layers of ``net.net`` trained after the warm-up.
        warmup_epochs (int): epochs of head-only training.
    """

    trigger = (1, 'iteration')
    priority = extension.PRIORITY_WRITER

    def __init__(self, net, frozen, trunk, warmup_epochs):
        self.net = net
        self.trunk = list(trunk)
        self.warmup_epochs = warmup_epochs
        self.warm_cut = max(frozen_cut(net.net, list(frozen) + self.trunk),
                            net.n_frozen_layers)
        self.unfrozen = None
        self.set_phase(unfrozen=warmup_epochs == 0)

    def set_phase(self, unfrozen):
        """Warm-up (``unfrozen`` False) or trunk training."""
        for name in self.trunk:
            layer = self.net.net[name]
            if unfrozen:
                layer.enable_update()
            else:
                layer.disable_update()
        self.net.graph_start = self.net.n_frozen_layers if unfrozen else \
            self.warm_cut
        self.unfrozen = unfrozen

    def initialize(self, trainer):
        self(trainer)

    def __call__(self, trainer):
        if not self.unfrozen and \
                trainer.updater.epoch >= self.warmup_epochs:
            self.set_phase(unfrozen=True)


def surgery_plan(surgery, pretrained, entry=None):
    """(head, frozen): the layer names ``--replace`` and ``--freeze`` (or
    ``--unfreeze``) name in ``surgery`` (a
    :class:`~finetune.training.config.SurgeryOptions`, e.g.
    ``config.surgery``); ``--replace auto`` is the registry ``entry``'s
    recommended head when there is one, e.g. AlexNet's fc6-fc8.

    Checked against the network before any image is scanned.

    Raises:
        FinetuneError: an unknown layer, a layer both replaced and frozen,
            or a frozen set the trained layers would feed.
    """
    try:
        head = parse_head_spec(surgery.replace, pretrained, entry)
    except FinetuneError as e:
        raise FinetuneError('--replace: %s' % e) from None
    try:
        frozen = frozen_before(pretrained, surgery.unfreeze) \
            if surgery.unfreeze else parse_layer_spec(surgery.freeze,
                                                      pretrained)
    except FinetuneError as e:
        raise FinetuneError(str(e) if surgery.unfreeze else
                            '--freeze: %s' % e) from None
    overlap = set(head) & set(frozen)
    if overlap:
        raise FinetuneError('layers both replaced and frozen: %s'
                            % ', '.join(sorted(overlap)))
    check_freeze_set(pretrained, frozen)
    return head, frozen
