"""CaffeSGD: Caffe's per-parameter multipliers, fused, against Chainer's
MomentumSGD with its WeightDecay hook and a rate-scaling hook."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from finetune.training import solver
class TwoLayers(chainer.Chain):
    layer_names = ['fc1', 'fc2']

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc1 = L.Linear(13, 37)
            self.fc2 = L.Linear(37, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class ScaleGrad:
    """Reference for lr_mult: scales ``grad + decay * W`` after the
    WeightDecay hook."""
    name = 'ScaleGrad'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, rule, param):
        param.grad *= self.rate


def reference_optimizer(model, lr, momentum, decay, head, head_mult,
                        bias_mult, target=None):
    """Chainer's own pieces: MomentumSGD + WeightDecay + ScaleGrad, for
    the layers of ``model``, optimizing ``target`` (default ``model``:
    e.g. a Classifier around it)."""
    optimizer = chainer.optimizers.MomentumSGD(lr=lr, momentum=momentum)
    optimizer.setup(model if target is None else target)
    for name in model.layer_names:
        for param_name, param in model[name].namedparams():
            is_bias = param_name.endswith('/b')
            if not is_bias:
                param.update_rule.add_hook(
                    chainer.optimizer_hooks.WeightDecay(decay))
            rate = (head_mult if name in head else 1) * (
                bias_mult if is_bias else 1)
            param.update_rule.add_hook(ScaleGrad(rate))
    return optimizer


@pytest.mark.parametrize('cpu_slice', [7, 1 << 18, None])
def test_caffe_sgd_matches_momentum_sgd_with_hooks(monkeypatch, cpu_slice):
    """Slices of 7 elements cross every parameter's rows; ``None`` is the
    whole-array (GPU) path."""
    if cpu_slice is None:
        monkeypatch.setattr(solver.CaffeSGDRule, 'update_core_cpu',
                            solver.CaffeSGDRule.update_core_gpu)
    else:
        monkeypatch.setattr(solver, 'CPU_SLICE', cpu_slice)
    rng = np.random.RandomState(0)
    ours, theirs = TwoLayers(), TwoLayers()
    theirs.copyparams(ours)
    initial = {name: p.array.copy() for name, p in ours.namedparams()}
    args = dict(lr=0.01, momentum=0.9)
    optimizer = solver.CaffeSGD(**args)
    optimizer.setup(ours)
    solver.set_caffe_lr_policy(ours, ['fc2'], 5e-3, head_lr_mult=10.0,
                               bias_lr_mult=2.0)
    reference = reference_optimizer(theirs, decay=5e-3, head=['fc2'],
                                    head_mult=10.0, bias_mult=2.0, **args)
    for step in range(5):
        x = rng.randn(8, 13).astype(np.float32)
        t = rng.randint(5, size=8).astype(np.int32)
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.update(lambda: F.softmax_cross_entropy(model(x), t))
        if step == 2:
            optimizer.lr = reference.lr = 0.003  # ExponentialShift's way
    for (name, a), (_, b) in zip(sorted(ours.namedparams()),
                                 sorted(theirs.namedparams())):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
        assert np.abs(a.array - initial[name]).max() > 1e-4, name


def test_caffe_lr_policy_multipliers():
    model = TwoLayers()
    optimizer = solver.CaffeSGD(lr=0.001)
    optimizer.setup(model)
    solver.set_caffe_lr_policy(model, ['fc2'], 5e-4, head_lr_mult=10.0,
                               bias_lr_mult=2.0)
    rules = {name: p.update_rule for name, p in model.namedparams()}
    assert (rules['/fc1/W'].lr_mult, rules['/fc1/W'].decay) == (1.0, 5e-4)
    assert (rules['/fc1/b'].lr_mult, rules['/fc1/b'].decay) == (2.0, 0.0)
    assert (rules['/fc2/W'].lr_mult, rules['/fc2/W'].decay) == (10.0, 5e-4)
    assert (rules['/fc2/b'].lr_mult, rules['/fc2/b'].decay) == (20.0, 0.0)


def test_caffe_lr_policy_refuses_other_optimizers():
    model = TwoLayers()
    chainer.optimizers.MomentumSGD().setup(model)
    with pytest.raises(TypeError, match='CaffeSGD'):
        solver.set_caffe_lr_policy(model, ['fc2'], 5e-4)


def test_snapshot_state_is_momentum_sgds(tmp_path):
    """Snapshots written before CaffeSGD (MomentumSGD's ``v``) resume."""
    rng = np.random.RandomState(1)
    x = rng.randn(4, 13).astype(np.float32)
    t = np.arange(4, dtype=np.int32)
    old = TwoLayers()
    old_opt = chainer.optimizers.MomentumSGD(lr=0.01)
    old_opt.setup(old)
    old_opt.update(lambda: F.softmax_cross_entropy(old(x), t))
    chainer.serializers.save_npz(str(tmp_path / 'opt.npz'), old_opt)
    new = TwoLayers()
    new_opt = solver.CaffeSGD(lr=0.01)
    new_opt.setup(new)
    chainer.serializers.load_npz(str(tmp_path / 'opt.npz'), new_opt)
    np.testing.assert_array_equal(new.fc1.W.update_rule.state['v'],
                                  old.fc1.W.update_rule.state['v'])


class ThreeLayers(chainer.Chain):
    layer_names = ['fc1', 'fc2', 'fc3']

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc1 = L.Linear(6, 5)
            self.fc2 = L.Linear(5, 4)
            self.fc3 = L.Linear(4, 3)


def test_make_optimizer_takes_the_solver_group_alone():
    """The solver's builder reads its own options (a SolverOptions, not
    the whole run's TrainConfig) and the layer lists the surgery chose:
    Caffe's rules (bias x2, no bias decay), the head at --head-lr-mult,
    the --unfreeze trunk at --trunk-lr-mult, the frozen layer not
    updated."""
    from finetune.training.config import SolverOptions
    from finetune.training.distributed import SingleProcess
    predictor = chainer.Chain()
    with predictor.init_scope():
        predictor.net = ThreeLayers()
    model = chainer.Chain()
    with model.init_scope():
        model.predictor = predictor
    options = SolverOptions(lr=0.02, momentum=0.5, weight_decay=1e-3,
                            head_lr_mult=10.0, trunk_lr_mult=0.25,
                            dtype='float32')
    optimizer = solver.make_optimizer(model, options, head=['fc3'],
                                      frozen=['fc1'], trunk=['fc2'],
                                      ranks=SingleProcess())
    assert (optimizer.lr, optimizer.momentum) == (0.02, 0.5)
    rules = {name: p.update_rule for name, p in model.namedparams()}
    assert not rules['/predictor/net/fc1/W'].enabled
    assert not rules['/predictor/net/fc1/b'].enabled
    expected = {'fc2/W': (0.25, 1e-3), 'fc2/b': (0.5, 0.0),
                'fc3/W': (10.0, 1e-3), 'fc3/b': (20.0, 0.0)}
    for name, (lr_mult, decay) in expected.items():
        rule = rules['/predictor/net/' + name]
        assert rule.enabled, name
        assert (rule.lr_mult, rule.decay) == (lr_mult, decay), name
