"""Caffe's SGD solver as a Chainer optimizer.

Caffe updates every parameter with its own rate and decay multipliers
(``param { lr_mult decay_mult }`` in a prototxt)::

    v <- momentum * v - lr * lr_mult * (grad + decay * W)
    W <- W + v

:class:`CaffeSGD` is Chainer's ``MomentumSGD`` whose update rules carry
``lr_mult`` and ``decay`` and apply all of it in one pass over the
parameter. The same arithmetic as ``MomentumSGD`` plus the
``WeightDecay`` hook and a rate-scaling hook, but those make about 16
passes over memory and allocate parameter-sized temporaries; for fc6
(37.7M weights) that is most of a head-only training step on the CPU.
"""
import chainer
from chainer.optimizers import momentum_sgd

from finetune.training import recipe
from finetune.training.surgery import freeze_layers

#: Elements per slice on the CPU: 1 MiB float32 temporaries stay in cache.
CPU_SLICE = 1 << 18


def caffe_sgd_update(param, grad, v, lr, momentum, decay, slice_size=None):
    """In place: ``v = momentum * v - lr * (grad + decay * param)``,
    ``param += v``.

    Args:
        param, grad, v: arrays of one shape (NumPy or CuPy), updated in
            place (``param`` and ``v``).
        lr (float): the parameter's rate (global rate x ``lr_mult``).
        momentum (float), decay (float): Caffe's momentum and the
            parameter's weight decay.
        slice_size (int): elements processed per slice; ``None`` does the
            whole array at once (the GPU path).
    """
    if slice_size is None or not (param.flags.c_contiguous and
                                  grad.flags.c_contiguous and
                                  v.flags.c_contiguous):
        slice_size = param.size
    param, grad, v = param.reshape(-1), grad.reshape(-1), v.reshape(-1)
    xp = chainer.backend.get_array_module(param)
    step = xp.empty(min(slice_size, param.size), param.dtype)
    for start in range(0, param.size, max(slice_size, 1)):
        stop = min(start + slice_size, param.size)
        p, g, m, s = param[start:stop], grad[start:stop], v[start:stop], \
            step[:stop - start]
        if decay:
            xp.multiply(p, decay, out=s)
            s += g
            s *= lr
        else:
            xp.multiply(g, lr, out=s)
        m *= momentum
        m -= s
        p += m


class CaffeSGDRule(momentum_sgd.MomentumSGDRule):
    """``MomentumSGDRule`` with Caffe's per-parameter ``lr_mult`` and
    ``decay`` (the weight decay, already times ``decay_mult``), fused.

    Its state is MomentumSGD's (``v``), so snapshots of either load in the
    other.
    """

    def __init__(self, parent_hyperparam=None, lr_mult=1.0, decay=0.0):
        super().__init__(parent_hyperparam)
        self.lr_mult = lr_mult
        self.decay = decay

    def _update(self, param, slice_size):
        if param.grad is None:
            return
        caffe_sgd_update(param.data, param.grad, self.state['v'],
                         self.hyperparam.lr * self.lr_mult,
                         self.hyperparam.momentum, self.decay, slice_size)

    def update(self, param):
        if getattr(self, '_resumed_fp32', None) is not None:
            self._fp32_param = chainer.Parameter(
                param.device.send(self._resumed_fp32))
            self._resumed_fp32 = None
        super().update(param)

    def serialize(self, serializer):
        """Also the float32 master copy of a float16 parameter
        (``use_fp32_update``), which Chainer leaves out of snapshots: a
        resumed float16 run then continues from the same weights."""
        super().serialize(serializer)
        if not self._use_fp32_update:
            return
        if isinstance(serializer, chainer.serializer.Deserializer):
            try:
                self._resumed_fp32 = serializer('fp32_param', None)
            except KeyError:  # no update had happened
                pass
        elif self._fp32_param is not None:
            serializer('fp32_param', self._fp32_param.array)

    def update_core_cpu(self, param):
        self._update(param, CPU_SLICE)

    def update_core_gpu(self, param):
        self._update(param, None)


class CaffeSGD(momentum_sgd.MomentumSGD):
    """MomentumSGD with :class:`CaffeSGDRule` rules (see
    :func:`set_caffe_lr_policy` for Caffe's fine-tuning multipliers)."""

    def create_update_rule(self):
        return CaffeSGDRule(self.hyperparam)

    def serialize(self, serializer):
        """Also the dynamic loss scale (``loss_scaling()``), which Chainer
        leaves out of snapshots."""
        super().serialize(serializer)
        if not self._loss_scaling_is_dynamic:
            return
        try:
            self._loss_scale = float(serializer('loss_scale',
                                                self._loss_scale))
            self._loss_scaling_isnan_ever = bool(serializer(
                'loss_scale_overflowed', self._loss_scaling_isnan_ever))
        except KeyError:  # a snapshot of a float32 run
            pass


def set_caffe_lr_policy(model, head_names, weight_decay, head_lr_mult=10.0,
                        bias_lr_mult=2.0):
    """Per-parameter decay and rate multipliers as in Caffe's recipes.

    Weights: decay ``weight_decay``, rate x1 (x``head_lr_mult`` in the new
    head). Biases: no decay, rate x``bias_lr_mult`` (x both in the head):
    BVLC AlexNet's ``param { lr_mult: 1 decay_mult: 1 } param { lr_mult:
    2 decay_mult: 0 }`` and Flickr-Style's 10/20 for its new fc8. Call
    after ``optimizer.setup(model)`` with a :class:`CaffeSGD`.
    """
    for name in model.layer_names:
        mult = head_lr_mult if name in head_names else 1.0
        for param_name, param in model[name].namedparams():
            rule = param.update_rule
            if not isinstance(rule, CaffeSGDRule):
                raise TypeError('set_caffe_lr_policy needs CaffeSGD, not %s'
                                % type(rule).__name__)
            is_bias = param_name.endswith('/b')
            rule.decay = 0.0 if is_bias else weight_decay
            rule.lr_mult = mult * (bias_lr_mult if is_bias else 1.0)


def make_optimizer(model, solver, head, frozen, trunk, ranks):
    """CaffeSGD set up on ``model`` with Caffe's multipliers and the frozen
    layers' updates disabled; with ``--dtype float16`` it keeps float32
    master weights and scales the loss dynamically.

    Args:
        model: Classifier over the training FineTuneNet.
        solver (SolverOptions): the rates, momentum, decay and dtype of the
            run (``config.solver``).
        head, frozen (list of str): the replaced and the frozen layers.
        trunk (list of str): the pretrained layers ``--unfreeze`` trains
            after the warm-up, at ``--trunk-lr-mult`` (empty without it).
        ranks: SingleProcess or MultiNode (wraps the optimizer).
    """
    sgd = CaffeSGD(lr=solver.lr, momentum=solver.momentum)
    if solver.dtype == 'float16':
        sgd.use_fp32_update()
        sgd.loss_scaling()
    optimizer = ranks.optimizer(sgd)
    optimizer.setup(model)
    network = model.predictor.net
    set_caffe_lr_policy(network, head, solver.weight_decay,
                        solver.head_lr_mult)
    freeze_layers(network, frozen)
    recipe.scale_trunk_rates(network, trunk, solver.trunk_lr_mult)
    return optimizer
