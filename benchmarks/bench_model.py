#!/usr/bin/env python
"""AlexNet on this CPU: Chainer (this project) vs PyTorch vs OpenCV dnn.

    .venv/bin/python benchmarks/bench_model.py            # ~7-8 min
    .venv/bin/python benchmarks/bench_model.py --quick    # < 2 min

Measures, at each batch size, forward (inference) and training-step
images/s of

(a) ``finetune.models.AlexNet`` (Chainer 7, as shipped),
(b) the same network written in PyTorch below (groups 2 on conv2/4/5,
    ``nn.LocalResponseNorm`` (which divides alpha by size, as Caffe does),
    ceil-mode max pooling), with the same weights,
(c) OpenCV dnn (``cv2.dnn.readNetFromCaffe``) on the BVLC deploy prototxt
    and a random-weights caffemodel written by ``finetune.caffe.writer``,
(d) frozen-trunk fine-tuning (conv1-conv5 frozen, fc6-fc8 trained):
    ``FineTuneNet(net, 5)`` + MomentumSGD with the trunk on Chainer, and
    with the project's default trunk backend ('auto': OpenCV dnn) where
    this version of finetune has it, vs PyTorch with the trunk under
    ``torch.no_grad()``,

the ratio Chainer/PyTorch, the fraction of the float32 GEMM rate measured
on this machine, and user vs system CPU time of the Chainer forward. It then
runs the Chainer forward in child processes with glibc malloc tuned through
the environment (and with mallopt() called in process), side by side with
the default, and finally the per-layer forward and backward times of a
training step and the optimizer's update (Chainer as shipped vs PyTorch),
which say where the full training step loses. All timings of one table
are taken interleaved (round-robin, median of --repeat rounds) in this one
run; ratios are medians of per-round paired ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


SECTIONS = ('peak', 'forward', 'train', 'frozen', 'malloc', 'layers')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='batch 32 only, fewer rounds and child processes '
                   '(< 2 min)')
    p.add_argument('--batches', default=None,
                   help='comma-separated batch sizes (default 32,64,128)')
    p.add_argument('--repeat', type=int, default=None,
                   help='timed rounds per measurement (median; default 3, '
                   '2 with --quick)')
    p.add_argument('--threads', type=int, default=2,
                   help='threads of every framework (default 2)')
    p.add_argument('--unset-openblas-env', action='store_true',
                   help='unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE first')
    p.add_argument('--skip', default='',
                   help='comma-separated sections to skip: peak,forward,'
                   'train,frozen,malloc,layers')
    p.add_argument('--profile', action='store_true',
                   help='only print the cProfile table of the Chainer '
                   'forward (as shipped) and exit')
    p.add_argument('--json', help='also write the figures to this file')
    p.add_argument('--cli-heap', action='store_true',
                   help="first apply keep_freed_memory(), the glibc heap "
                   "setting of the train/predict/demo commands, to this "
                   "whole process (every framework): the rates a "
                   "'python -m finetune.train' run sees")
    # internal: a child process measuring the Chainer forward
    p.add_argument('--child-forward', type=int, help=argparse.SUPPRESS)
    p.add_argument('--child-calls', type=int, default=3,
                   help=argparse.SUPPRESS)
    p.add_argument('--child-keep-freed', action='store_true',
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = '32' if args.quick else '32,64,128'
    args.batches = [int(b) for b in args.batches.split(',')]
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    args.skip = set(filter(None, args.skip.split(',')))
    unknown = sorted(args.skip - set(SECTIONS))
    if unknown:
        p.error('--skip: unknown section %s (sections: %s)'
                % (', '.join(unknown), ', '.join(SECTIONS)))
    return args


# ---------------------------------------------------------------- models
def torch_alexnet(n_classes=1000):
    import torch.nn as nn
    import torch.nn.functional as F

    class TorchAlexNet(nn.Module):
        """BVLC AlexNet in PyTorch, Caffe layout
        (models/zoo/bvlc_alexnet_deploy.prototxt)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
            self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
            self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
            self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
            self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
            self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.fc6 = nn.Linear(256 * 6 * 6, 4096)
            self.fc7 = nn.Linear(4096, 4096)
            self.fc8 = nn.Linear(4096, n_classes)
            self.drop = nn.Dropout(0.5)

        def trunk(self, x):
            h = self.pool(self.norm(F.relu(self.conv1(x))))
            h = self.pool(self.norm(F.relu(self.conv2(h))))
            h = F.relu(self.conv3(h))
            h = F.relu(self.conv4(h))
            h = self.pool(F.relu(self.conv5(h)))
            return h.flatten(1)

        def head(self, h):
            h = self.drop(F.relu(self.fc6(h)))
            h = self.drop(F.relu(self.fc7(h)))
            return self.fc8(h)

        def forward(self, x):
            return self.head(self.trunk(x))

    return TorchAlexNet()


def chainer_net(weights):
    import chainer
    from finetune.models import AlexNet
    net = AlexNet(initialW=chainer.initializers.Zero())
    for name, arrays in weights.items():
        net[name].W.array[...] = arrays[0]
        net[name].b.array[...] = arrays[1]
    return net


def torch_net(weights):
    import torch
    net = torch_alexnet()
    with torch.no_grad():
        for name, arrays in weights.items():
            layer = getattr(net, name)
            layer.weight.copy_(torch.from_numpy(arrays[0]))
            layer.bias.copy_(torch.from_numpy(arrays[1]))
    return net


def inputs(batch, seed=1):
    import numpy as np
    rng = np.random.RandomState(seed)
    x = rng.uniform(-120, 120, (batch, 3, 227, 227)).astype(np.float32)
    t = rng.randint(0, 1000, batch).astype(np.int32)
    return x, t


# ---------------------------------------------------------------- steps

def finetune_net(net, frozen, backend='chainer'):
    """FineTuneNet(net, frozen) with its frozen prefix run by ``backend``:
    'chainer', or 'auto' (OpenCV's dnn on the CPU, the project's default
    since the OpenCV trunk backend was added). None when this version of
    finetune has no such backend."""
    from finetune.training.surgery import FineTuneNet
    try:
        return FineTuneNet(net, frozen, trunk_backend=backend)
    except TypeError:  # finetune before --trunk-backend
        return FineTuneNet(net, frozen) if backend == 'chainer' else None


def chainer_train_fn(net, x, t, frozen, backend='chainer'):
    """One SGD step (lr 0.001, momentum 0.9, weight decay 5e-4) as
    finetune.train sets it up: Classifier(FineTuneNet(net, frozen)),
    CaffeSGD with Caffe's multipliers (the layers after ``frozen`` are the
    new head: x10; biases x2, no decay)."""
    import chainer
    from finetune.training.solver import CaffeSGD, set_caffe_lr_policy
    from finetune.training.surgery import freeze_layers
    from finetune.training.extensions import Classifier
    predictor = finetune_net(net, frozen, backend)
    if predictor is None:
        return None
    model = Classifier(predictor)
    opt = CaffeSGD(lr=0.001, momentum=0.9)
    opt.setup(model)
    set_caffe_lr_policy(net, net.layer_names[frozen:] if frozen else [],
                        5e-4)
    freeze_layers(net, net.layer_names[:frozen])

    def run():
        with chainer.using_config('train', True):
            opt.update(model, x, t)
    return run


def torch_train_fn(net, x, t, frozen):
    import torch
    import torch.nn.functional as F
    xt, tt = torch.from_numpy(x), torch.from_numpy(t.astype('int64'))
    if frozen:
        params = [p for name in ('fc6', 'fc7', 'fc8')
                  for p in getattr(net, name).parameters()]
        for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
            for p in getattr(net, name).parameters():
                p.requires_grad_(False)
    else:
        params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=5e-4)
    net.train()

    def run():
        opt.zero_grad(set_to_none=True)
        if frozen:
            with torch.no_grad():
                h = net.trunk(xt)
            y = net.head(h)
        else:
            y = net(xt)
        loss = F.cross_entropy(y, tt)
        loss.backward()
        opt.step()
    return run


def opencv_forward_fn(prototxt, caffemodel, x):
    import cv2
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)

    def run():
        net.setInput(x)
        return net.forward('fc8')
    return run


def rel_err(a, b):
    import numpy as np
    a = np.asarray(a).reshape(len(b), -1)
    b = np.asarray(b).reshape(len(b), -1)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------- child
def child_forward(args):
    """Chainer forward in this (child) process; prints one JSON line."""
    if args.child_keep_freed:
        from finetune.common.allocator import keep_freed_memory
        keep_freed_memory()
    from finetune.models import AlexNet
    net = AlexNet()
    x, _ = inputs(args.child_forward)
    run = C.chainer_forward_fn(net, x)
    recs = C.interleaved({'f': run}, args.child_calls, 1)['f']
    print(json.dumps({'img_s': C.rate(recs, args.child_forward),
                      'utime': recs['utime'], 'stime': recs['stime'],
                      'minflt': recs['minflt'], 'hwm_mb': vm_hwm_mb()}))
    return 0


def vm_hwm_mb():
    """This process's peak RSS (VmHWM; ru_maxrss would include the parent's
    peak, which Linux carries over at exec)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


def run_child(env_extra, batch, calls, keep_freed=False,
              unset_openblas=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    env.update(env_extra)
    cmd = [sys.executable, os.path.abspath(__file__), '--child-forward',
           str(batch), '--child-calls', str(calls),
           '--threads', env.get('OMP_NUM_THREADS', '2')]
    if keep_freed:
        cmd.append('--child-keep-freed')
    if unset_openblas:
        cmd.append('--unset-openblas-env')
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- sections
def section_peak(args, figures):
    peak = C.matmul_peak((2048,), repeat=args.repeat if args.quick else 5)
    rows = [(lib, n, peak[(lib, n)]) for (lib, n) in sorted(
        k for k in peak if k != 'peak')]
    C.emit(C.table(['library', 'n', 'GFLOP/s'], rows,
                   '\n== float32 GEMM rate (n x n @ n x n, median) =='))
    C.emit(['peak used below: %.0f GFLOP/s (best median); AlexNet: forward '
            '%.3f, full train step %.3f, frozen-trunk step %.3f GFLOP/image'
            % (peak['peak'], C.FORWARD_GFLOP, C.TRAIN_GFLOP,
               C.FROZEN_GFLOP)])
    figures['gemm'] = {'%s_%d' % k: v for k, v in peak.items()
                       if k != 'peak'}
    figures['peak_gflops'] = peak['peak']
    return peak['peak']


def pct(img_s, gflop, peak):
    return 100.0 * img_s * gflop / peak


def section_forward(args, weights, caffemodel, peak, figures):
    cnet, tnet = chainer_net(weights), torch_net(weights)
    rows, cpu_rows = [], []
    for i, batch in enumerate(args.batches):
        x, _ = inputs(batch)
        fns = {'chainer': C.chainer_forward_fn(cnet, x),
               'pytorch': C.torch_forward_fn(tnet, x),
               'opencv': opencv_forward_fn(C.DEPLOY, caffemodel, x)}
        add_main(fns)
        if i == 0:
            ref = fns['opencv']()
            errs = {k: rel_err(fns[k](), ref) for k in fns if k != 'opencv'}
            C.emit(['\nsame network check (logits vs OpenCV, rel. error): ' +
                    ', '.join('%s %.1e' % kv for kv in errs.items())])
        recs = C.interleaved(fns, rounds_for(args, batch),
                             {'chainer': int(i == 0), 'pytorch': 1,
                              'opencv': 1, MAIN: int(i == 0)})
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        rows.append((batch, r['chainer'], r['pytorch'], r['opencv'],
                     C.paired_ratio(recs, 'chainer', 'pytorch'),
                     C.paired_ratio(recs, 'opencv', 'pytorch'),
                     pct(r['chainer'], C.FORWARD_GFLOP, peak),
                     pct(r['pytorch'], C.FORWARD_GFLOP, peak),
                     pct(r['opencv'], C.FORWARD_GFLOP, peak)) +
                    main_columns(recs, r))
        c = recs['chainer']
        cpu_rows.append((batch, median_time(c), c['utime'], c['stime'],
                         100 * c['stime'] / max(c['utime'] + c['stime'],
                                                1e-9), c['minflt']))
        figures.setdefault('forward', {})[batch] = r
    C.emit(C.table(
        ['batch', 'chainer', 'pytorch', 'opencv', 'ch/pt', 'cv/pt',
         'ch %pk', 'pt %pk', 'cv %pk'] + MAIN_HEADERS[:len(rows[0]) - 9],
        rows,
        '\n== forward (inference), images/s; %%pk = %% of GEMM peak; ratios '
        '= median of per-round paired ratios; "chainer" = the Chainer path '
        'with the CPU kernels, "%s" = the same with Chainer\'s own '
        'functions (main before the kernels) ==' % MAIN))
    C.emit(C.table(
        ['batch', 'wall s', 'user s', 'sys s', 'sys %', 'minflt'], cpu_rows,
        '\n== Chainer forward CPU time per call (getrusage, median) =='))


MAIN = 'ch main'
MAIN_HEADERS = [MAIN, 'main/pt', 'ch/main']


def add_main(fns):
    """Add fns[MAIN]: fns['chainer'] with Chainer's own functions, when
    this finetune has CPU kernels to switch off."""
    main = C.without_cpu_kernels(fns['chainer'])
    if main is not None:
        fns[MAIN] = main


def main_columns(recs, r):
    """(ch main img/s, main/pt, chainer/main) or () without MAIN."""
    if MAIN not in recs:
        return ()
    return (r[MAIN], C.paired_ratio(recs, MAIN, 'pytorch'),
            C.paired_ratio(recs, 'chainer', MAIN))


def rounds_for(args, batch):
    """--repeat rounds at batch 32 (the baseline's); one fewer (at least 2)
    at larger batches, to keep the default run under 8 minutes."""
    return max(2, args.repeat - 1) if batch > 32 else args.repeat


def median_time(rec):
    return C.median(rec['times'])


def section_train(args, weights, peak, figures, frozen):
    key = 'frozen' if frozen else 'train'
    gflop = C.FROZEN_GFLOP if frozen else C.TRAIN_GFLOP
    rows = []
    cnet, tnet = chainer_net(weights), torch_net(weights)
    cvnet = chainer_net(weights) if frozen else None
    for i, batch in enumerate(args.batches):
        x, t = inputs(batch)
        fns = {'chainer': chainer_train_fn(cnet, x, t, 5 if frozen else 0),
               'pytorch': torch_train_fn(tnet, x, t, frozen)}
        if frozen:
            fns['cv trunk'] = chainer_train_fn(cvnet, x, t, 5, 'auto')
            if fns['cv trunk'] is None:
                del fns['cv trunk']
        else:
            add_main(fns)
        recs = C.interleaved(fns, rounds_for(args, batch),
                             {'chainer': int(i == 0), 'pytorch': 1,
                              'cv trunk': 1, MAIN: int(i == 0)})
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        row = [batch, r['chainer'], r['pytorch'],
               C.paired_ratio(recs, 'chainer', 'pytorch'),
               pct(r['chainer'], gflop, peak),
               pct(r['pytorch'], gflop, peak)]
        if 'cv trunk' in r:
            row[2:2] = [r['cv trunk']]
            row.insert(5, C.paired_ratio(recs, 'cv trunk', 'pytorch'))
        rows.append(row + list(main_columns(recs, r)))
        figures.setdefault(key, {})[batch] = r
    if frozen:
        title = ('frozen-trunk fine-tuning step (conv1-conv5 frozen, fc6-fc8 '
                 'trained), images/s; "chainer" = FineTuneNet(net, 5, '
                 "trunk_backend='chainer'), \"cv trunk\" = the project's "
                 "default 'auto' (OpenCV dnn runs the frozen trunk, Chainer "
                 'the head)')
    else:
        title = ('full training step (all layers), images/s; "%s" = '
                 "Chainer's own functions instead of the CPU kernels" % MAIN)
    headers = ['batch', 'chainer', 'pytorch', 'ch/pt', 'ch %pk', 'pt %pk']
    if frozen and rows and len(rows[0]) > len(headers):
        headers[2:2] = ['cv trunk']
        headers.insert(5, 'cvt/pt')
    elif rows and len(rows[0]) > len(headers):
        headers += MAIN_HEADERS
    C.emit(C.table(headers, rows, '\n== %s ==' % title))


def section_malloc(args, figures):
    batch = args.batches[0]
    configs = [('default', {}, False),
               ('MALLOC_* env', MALLOC_ENV, False)]
    if not args.quick:
        configs += [('MALLOC_ARENA_MAX=2', {'MALLOC_ARENA_MAX': '2'}, False),
                    ('keep_freed_memory() in process', {}, True)]
    rounds = 1
    calls = 2
    results = {name: [] for name, _, _ in configs}
    for _ in range(rounds):
        for name, env, keep_freed in configs:
            results[name].append(run_child(env, batch, calls, keep_freed,
                                           args.unset_openblas_env))
    base = C.median([r['img_s'] for r in results['default']])
    rows = []
    for name, env, _ in configs:
        rs = results[name]
        img_s = C.median([r['img_s'] for r in rs])
        rows.append((name, img_s, img_s / base,
                     C.median([r['utime'] for r in rs]),
                     C.median([r['stime'] for r in rs]),
                     C.median([r['minflt'] for r in rs]),
                     C.median([r['hwm_mb'] for r in rs])))
        figures.setdefault('malloc', {})[name] = img_s
    C.emit(C.table(
        ['malloc setting', 'img/s', 'vs default', 'user s', 'sys s',
         'minflt', 'peak RSS MB'], rows,
        '\n== Chainer forward (batch %d) in child processes (median of %d '
        'calls each, as shipped unless named) ==' % (batch, calls)))
    C.emit(['MALLOC_* env = ' + ' '.join(
        '%s=%s' % kv for kv in sorted(MALLOC_ENV.items()))])


#: glibc's heap tuned through the environment for a child process (the
#: settings finetune.common.allocator.keep_freed_memory makes in process,
#: without its bound on kept memory)
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(2 ** 31 - 1),
              'MALLOC_TRIM_THRESHOLD_': str(2 ** 31 - 1),
              'MALLOC_TOP_PAD_': str(256 << 20)}


def torch_layer(net, name):
    """The PyTorch op of AlexNet's layer ``name`` (a name of
    ``CaffeGraph.layer_order``)."""
    import torch.nn.functional as F
    kind = name.rstrip('0123456789')
    if name == 'fc6':
        return lambda h: net.fc6(h.flatten(1))
    if kind in ('conv', 'fc'):
        return getattr(net, name)
    return {'relu': F.relu, 'norm': net.norm, 'pool': net.pool,
            'drop': net.drop}[kind]


def chainer_layer(net, name, stop):
    """AlexNet's layer ``name`` as shipped: the CaffeGraph run from the cut
    before ``name`` to the cut ``stop`` (the next layer, None: the end)."""
    return lambda h: net.forward(h, start=name, stop=stop)


def _timed_step(forward, backward):
    t0 = time.perf_counter()
    y = forward()
    t1 = time.perf_counter()
    backward(y)
    return t1 - t0, time.perf_counter() - t1


def section_layers(args, weights, figures):
    """Per-layer forward and backward time of one training step at the
    first of ``--batches``: AlexNet as shipped (the CaffeGraph with the
    CPU kernels, cut before every layer) vs the same op in PyTorch, each on its own framework's
    output of the layer before, in training mode. As in a training step,
    every layer's input gets its gradient but the first's, and every
    parameter its gradient; then the optimizer's update of all 61M
    parameters (CaffeSGD vs torch.optim.SGD, momentum and decay)."""
    import chainer
    import numpy as np
    import torch
    batch = args.batches[0]
    x, _ = inputs(batch)
    cnet, tnet = chainer_net(weights), torch_net(weights).train()
    order = list(cnet.layer_order)
    rounds = 3 if args.quick else max(3, args.repeat)
    hc, ht = x, torch.from_numpy(x)
    rows, totals = [], np.zeros(4)
    for i, name in enumerate(order):
        stop = order[i + 1] if i + 1 < len(order) else None
        c_op, t_op = chainer_layer(cnet, name, stop), torch_layer(tnet, name)
        c_in = chainer.Variable(hc, requires_grad=i > 0)
        t_in = ht.detach().requires_grad_(i > 0)

        def c_forward():
            with chainer.using_config('train', True):
                return c_op(c_in)

        def c_backward(y):
            y.grad = np.ones(y.shape, np.float32)
            y.backward()

        def t_forward():
            return t_op(t_in)

        def t_backward(y):
            y.backward(torch.ones_like(y))
        times = {'chainer': [], 'pytorch': []}
        for r in range(rounds + 1):  # the first round warms up
            for key, fwd, bwd, params in (
                    ('chainer', c_forward, c_backward, cnet.cleargrads),
                    ('pytorch', t_forward, t_backward,
                     lambda: tnet.zero_grad(set_to_none=True))):
                params()
                c_in.grad, t_in.grad = None, None
                time.sleep(0.05)
                step = _timed_step(fwd, bwd)
                if r:
                    times[key].append(step)
        ms = [1e3 * C.median([t[k] for t in times[key]])
              for key in ('chainer', 'pytorch') for k in (0, 1)]
        totals += ms
        with chainer.using_config('train', True), torch.no_grad():
            hc, ht = c_op(hc).array, t_op(ht)
        rows.append([name, 'x'.join(map(str, hc.shape[1:]))] + ms +
                    [(ms[2] + ms[3]) / (ms[0] + ms[1])])
        figures.setdefault('layers', {})[name] = ms
    update = layer_update_times(cnet, tnet, rounds)
    rows.append(['SGD update', '61M params', 0.0, update[0], 0.0,
                 update[1], update[1] / update[0]])
    totals += [0.0, update[0], 0.0, update[1]]
    rows.append(['total', '', *totals,
                 (totals[2] + totals[3]) / (totals[0] + totals[1])])
    C.emit(C.table(
        ['layer', 'output', 'ch fwd ms', 'ch bwd ms', 'pt fwd ms',
         'pt bwd ms', 'ch/pt speed'], rows,
        '\n== per-layer training step, batch %d, median of %d rounds: '
        'Chainer as shipped (CaffeGraph, CPU kernels) vs PyTorch; '
        '"ch/pt speed" = PyTorch time / Chainer time (the img/s ratio of '
        'the other tables) ==' % (batch, rounds)))
    figures['layers_update'] = update


def layer_update_times(cnet, tnet, rounds):
    """(Chainer ms, PyTorch ms): one optimizer update of every parameter
    from gradients already there, as the training step does after its
    backward."""
    import numpy as np
    import torch
    from finetune.training.solver import CaffeSGD, set_caffe_lr_policy
    for param in cnet.params():
        param.grad = np.full(param.shape, 1e-3, np.float32)
    for param in tnet.parameters():
        param.grad = torch.full_like(param, 1e-3)
    copt = CaffeSGD(lr=0.001, momentum=0.9)
    copt.setup(cnet)
    set_caffe_lr_policy(cnet, [], 5e-4)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.001, momentum=0.9,
                           weight_decay=5e-4)
    recs = C.interleaved({'chainer': copt.update, 'pytorch': topt.step},
                         rounds, 1)
    return [1e3 * C.median(recs[k]['times']) for k in ('chainer', 'pytorch')]


def profile(args):
    """cProfile of 2 Chainer forwards of AlexNet as shipped."""
    import cProfile
    import io
    import pstats
    from finetune.weights.random_model import write_random_alexnet
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_alexnet(os.path.join(tmp, 'a.caffemodel'))
    x, _ = inputs(args.batches[0])
    run = C.chainer_forward_fn(chainer_net(weights), x)
    run()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2):
        run()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats('tottime').print_stats(12)
    print('\n== cProfile of 2 Chainer forwards, batch %d, as shipped =='
          % args.batches[0])
    print('\n'.join(line for line in out.getvalue().splitlines()
                    if line.strip() and 'Ordered by' not in line and
                    'List reduced' not in line))
    return 0


LAPS = [('start', time.time())]


def lap(name):
    LAPS.append((name, time.time() - sum(t for _, t in LAPS[1:]) -
                 LAPS[0][1]))


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads, args.unset_openblas_env)
    if args.child_forward:
        return child_forward(args)
    start = time.time()
    torch, cv2 = C.framework_threads(args.threads)
    if args.profile:
        return profile(args)
    import chainer
    C.emit(['# bench_model.py ' + ' '.join(sys.argv[1:])] +
           C.environment_report(args.threads, removed) +
           ['chainer %s, torch %s (torch threads %d), opencv %s (threads %d)'
            % (chainer.__version__, torch.__version__,
               torch.get_num_threads(), cv2.__version__,
               cv2.getNumThreads()),
            'batches %s, %d timed rounds each (median; %d above batch 32),'
            ' interleaved' % (args.batches, args.repeat,
                              max(2, args.repeat - 1))])
    C.emit(C.cli_heap_report(args.cli_heap))
    figures = {}
    peak = 1.0
    if 'peak' not in args.skip:
        peak = section_peak(args, figures)
        lap('peak')
    from finetune.weights.random_model import write_random_alexnet
    with tempfile.TemporaryDirectory() as tmp:
        caffemodel = os.path.join(tmp, 'alexnet_random.caffemodel')
        weights = write_random_alexnet(caffemodel, seed=0)
        if 'forward' not in args.skip:
            section_forward(args, weights, caffemodel, peak, figures)
            lap('forward')
    if 'train' not in args.skip:
        section_train(args, weights, peak, figures, frozen=False)
        lap('train')
    if 'frozen' not in args.skip:
        section_train(args, weights, peak, figures, frozen=True)
        lap('frozen')
    if 'malloc' not in args.skip:
        section_malloc(args, figures)
        lap('malloc')
    if 'layers' not in args.skip:
        section_layers(args, weights, figures)
        lap('layers')
    C.emit(['section times: ' + ', '.join('%s %.0f s' % kv
                                           for kv in LAPS[1:])])
    C.emit(['\ntotal time %.0f s' % (time.time() - start)])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
