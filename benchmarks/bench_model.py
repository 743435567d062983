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
the default, then measures a ladder of MONKEYPATCHED variants
(benchmarks/_variants.py) that estimate what changes to the project would
gain, and finally the per-layer forward time (Chainer as shipped, with the
variants, PyTorch). All timings of one table are taken interleaved
(round-robin, median of --repeat rounds) in this one run; ratios are
medians of per-round paired ratios.
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
    p.add_argument('--variant-batch', type=int, default=32,
                   help='batch of the monkeypatched-variant ladder')
    p.add_argument('--skip', default='',
                   help='comma-separated sections to skip: peak,forward,'
                   'train,frozen,malloc,variants,ops')
    p.add_argument('--profile', action='store_true',
                   help='only print cProfile tables of the Chainer forward '
                   '(as shipped and with all variants) and exit')
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
    p.add_argument('--child-variants', default='', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = '32' if args.quick else '32,64,128'
    args.batches = [int(b) for b in args.batches.split(',')]
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    args.skip = set(filter(None, args.skip.split(',')))
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
    import _variants
    if args.child_variants:
        _variants.apply(args.child_variants.split(','))
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


def run_child(env_extra, batch, calls, variants='', unset_openblas=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    env.update(env_extra)
    cmd = [sys.executable, os.path.abspath(__file__), '--child-forward',
           str(batch), '--child-calls', str(calls),
           '--threads', env.get('OMP_NUM_THREADS', '2')]
    if variants:
        cmd += ['--child-variants', variants]
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
    configs = [('default', {}, ''),
               ('MALLOC_* env', C_malloc_env(), '')]
    if not args.quick:
        configs += [('MALLOC_ARENA_MAX=2', {'MALLOC_ARENA_MAX': '2'}, ''),
                    ('mallopt() in process', {}, 'mallopt')]
    rounds = 1
    calls = 2
    results = {name: [] for name, _, _ in configs}
    for _ in range(rounds):
        for name, env, variants in configs:
            results[name].append(run_child(env, batch, calls, variants,
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
        '%s=%s' % kv for kv in sorted(C_malloc_env().items()))])


def C_malloc_env():
    import _variants
    return dict(_variants.MALLOC_ENV)


LADDER = [
    ('as shipped', []),
    ('+ mallopt: keep freed heap', ['mallopt']),
    ('+ conv: im2col in GEMM order', ['conv']),
    ('+ pool: strided max', ['pool']),
    ('+ lrn: sqrt for pow(-0.75)', ['lrn']),
    ('+ detach (frozen only; fwd = row above)', ['detach']),
]
# the 'threads' variant is measured per layer in section_ops
LADDER_QUICK = [
    ('as shipped', []),
    ('+ all: mallopt, conv, pool, lrn, threads, detach',
     ['mallopt', 'conv', 'pool', 'lrn', 'threads', 'detach']),
]


def detach_shipped():
    """True when this finetune's FineTuneNet already returns frozen
    features that need no gradient (so the 'detach' variant changes
    nothing)."""
    import chainer
    import numpy as np
    from finetune.models import AlexNet
    net = finetune_net(AlexNet(n_classes=10,
                               initialW=chainer.initializers.Zero()), 5)
    h = net.features(np.zeros((1, 3, 227, 227), np.float32))
    return not getattr(h, 'requires_grad', False)


def section_variants(args, weights, peak, figures):
    import _variants
    batch = args.variant_batch
    x, t = inputs(batch)
    tnet_f, tnet_ft = torch_net(weights), torch_net(weights)
    tfns = {'pt fwd': C.torch_forward_fn(tnet_f, x),
            'pt frozen': torch_train_fn(tnet_ft, x, t, True)}
    rows = []
    applied = []
    first = prev = prev_recs = None
    ref_logits = None
    ladder = LADDER_QUICK if args.quick else LADDER
    rounds = 2 if args.quick else args.repeat
    shipped_detach = detach_shipped()
    for label, names in ladder:
        if names == ['detach'] and shipped_detach:
            label = '+ detach (already shipped: no change)'
        applied += _variants.apply(names)
        cnet_f, cnet_ft = chainer_net(weights), chainer_net(weights)
        fns = {'ch fwd': C.chainer_forward_fn(cnet_f, x),
               'ch frozen': chainer_train_fn(cnet_ft, x, t, 5)}
        fns.update(tfns)
        logits = fns['ch fwd']()  # also the warm-up of 'ch fwd'
        if ref_logits is None:
            ref_logits = logits
        err = rel_err(logits, ref_logits)
        if names == ['detach'] and prev is not None:
            # forward unchanged by this variant: carry the row above over
            for key in ('ch fwd', 'pt fwd'):
                del fns[key]
        warm = {'ch fwd': 0, 'ch frozen': 1, 'pt fwd': int(first is None),
                'pt frozen': int(first is None)}
        recs = C.interleaved(fns, rounds, warm)
        if 'ch fwd' not in recs:
            recs.update(prev_recs)
        prev_recs = {k: recs[k] for k in ('ch fwd', 'pt fwd')}
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        if first is None:
            first = prev = r
        rows.append((label, r['ch fwd'],
                     C.paired_ratio(recs, 'ch fwd', 'pt fwd'),
                     r['ch fwd'] / prev['ch fwd'],
                     r['ch frozen'],
                     C.paired_ratio(recs, 'ch frozen', 'pt frozen'),
                     r['ch frozen'] / prev['ch frozen'],
                     r['ch fwd'] / first['ch fwd'],
                     r['ch frozen'] / first['ch frozen'], '%.0e' % err))
        figures.setdefault('variants', {})[label] = r
        prev = r
    C.emit(C.table(
        ['variant (cumulative)', 'fwd', 'fwd/pt', 'step gain', 'frozen',
         'frz/pt', 'step gain', 'fwd x', 'frz x', 'logit err'], rows,
        '\n== MONKEYPATCHED variants (benchmarks/_variants.py), batch %d, '
        'img/s; PyTorch re-measured interleaved at every row ==' % batch))
    pt = figures['variants'][label]  # the last row
    C.emit(['PyTorch in the last row: forward %.1f, frozen step %.1f img/s; '
            '"x" columns: vs "as shipped" row. PyTorch shares this '
            "process's malloc: from the mallopt row on it runs with the "
            'tuned heap too' % (pt['pt fwd'], pt['pt frozen'])])
    if args.quick:
        return
    # the full training step with every variant (forward patches only help
    # partly: the conv backward is Chainer's own)
    cnet, tnet = chainer_net(weights), torch_net(weights)
    recs = C.interleaved({'chainer': chainer_train_fn(cnet, x, t, 0),
                          'pytorch': torch_train_fn(tnet, x, t, False)},
                         max(2, args.repeat - 1), 1)
    r = {k: C.rate(v, batch) for k, v in recs.items()}
    shipped = figures.get('train', {}).get(batch, {}).get('chainer')
    C.emit(['full training step with all variants (MONKEYPATCHED), batch '
            '%d: Chainer %.1f img/s, PyTorch %.1f, ratio %.2f%s'
            % (batch, r['chainer'], r['pytorch'],
               C.paired_ratio(recs, 'chainer', 'pytorch'),
               ', vs as-shipped Chainer %.2fx (measured in the train '
               'section)' % (r['chainer'] / shipped) if shipped else '')])
    figures['variants_train'] = r


OPS = ['conv1', 'relu1', 'norm1', 'pool1', 'conv2', 'relu2', 'norm2',
       'pool2', 'conv3', 'relu3', 'conv4', 'relu4', 'conv5', 'relu5',
       'pool5', 'fc6', 'relu6', 'fc7', 'relu7', 'fc8']


def chainer_op(net, name):
    import chainer.functions as F
    from finetune.models import alexnet
    kind = name.rstrip('0123456789')
    if kind in ('conv', 'fc'):
        return net[name]
    if kind == 'relu':
        return F.relu
    if kind == 'norm':
        return alexnet._norm   # -> caffe_lrn
    return alexnet._pool       # -> alexnet.caffe_pooling_2d (patchable)


def torch_op(net, name):
    import torch.nn.functional as F
    kind = name.rstrip('0123456789')
    if name == 'fc6':
        return lambda h: net.fc6(h.flatten(1))
    if kind in ('conv', 'fc'):
        return getattr(net, name)
    return {'relu': F.relu, 'norm': net.norm, 'pool': net.pool}[kind]


def section_ops(args, weights, figures):
    """Per-layer forward time: Chainer as shipped, Chainer with the code
    variants (one thread, then two), PyTorch; each op on its own chain's
    intermediate arrays (the variants keep a channel-major layout)."""
    import chainer
    import torch
    import _variants
    one = ['conv', 'pool', 'lrn']
    two = one + ['threads']
    batch = args.variant_batch
    x, _ = inputs(batch)
    cnet, tnet = chainer_net(weights), torch_net(weights).eval()

    def chainer_call(op, h):
        def run():
            with chainer.using_config('train', False), \
                    chainer.no_backprop_mode():
                return op(h).array
        return run

    def patched(fn, names):
        def run():
            _variants.apply(names)
            try:
                return fn()
            finally:
                _variants.restore()
        return run

    def torch_call(op, h):
        def run():
            with torch.no_grad():
                return op(h)
        return run

    keys = ('shipped', 'variant', 'variant 2t', 'pytorch')
    hs = h1 = h2 = x
    ht = torch.from_numpy(x)
    rows, totals = [], [0.0] * len(keys)
    for name in OPS:
        op = chainer_op(cnet, name)
        fns = {'shipped': chainer_call(op, hs),
               'variant': patched(chainer_call(op, h1), one),
               'variant 2t': patched(chainer_call(op, h2), two),
               'pytorch': torch_call(torch_op(tnet, name), ht)}
        recs = C.interleaved(fns, 5, 1, pause=0)
        ms = [1e3 * C.median(recs[k]['times']) for k in keys]
        hs, h1, h2, ht = (fns[k]() for k in keys)
        totals = [a + b for a, b in zip(totals, ms)]
        rows.append([name, 'x'.join(map(str, hs.shape[1:]))] + ms +
                    [ms[0] / ms[3], ms[2] / ms[3]])
        figures.setdefault('ops', {})[name] = ms
    rows.append(['total', ''] + totals + [totals[0] / totals[3],
                                          totals[2] / totals[3]])
    C.emit(C.table(
        ['op', 'output', 'shipped ms', 'var 1t ms', 'var 2t ms',
         'pytorch ms', 'ship/pt', 'var2t/pt'], rows,
        '\n== per-layer forward, batch %d, median of 5 (this process has '
        'the mallopt tuning from here on); "var" = MONKEYPATCHED %s, on 1 '
        'thread (1t) or with the threads variant (2t) =='
        % (batch, '+'.join(one))))


def pooling_pad_report():
    from finetune.models.functions import pooled_size
    lines = []
    for size in (55, 27, 13):
        out = pooled_size(size, 3, 2, 0)
        extra = max(0, (out - 1) * 2 + 3 - size)
        lines.append('%d->%d (extra pad %d)' % (size, out, extra))
    return ['caffe_pooling_2d on AlexNet: ' + ', '.join(lines) +
            ': F.pad is never called; the [:, :, :out] crop is a no-op '
            'GetItem']


def profile(args):
    import cProfile
    import io
    import pstats
    import _variants
    from finetune.weights.random_model import write_random_alexnet
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_alexnet(os.path.join(tmp, 'a.caffemodel'))
    x, _ = inputs(args.variant_batch)
    for label, names in (('as shipped', []),
                         ('all variants (MONKEYPATCHED)', list(
                             _variants.ALL))):
        _variants.apply(names)
        run = C.chainer_forward_fn(chainer_net(weights), x)
        run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2):
            run()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats('tottime').print_stats(12)
        print('\n== cProfile of 2 Chainer forwards, batch %d, %s =='
              % (args.variant_batch, label))
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
    C.emit(pooling_pad_report())
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
    if 'variants' not in args.skip:
        # the monkeypatches replace Chainer's functions: the ladder starts
        # from them (main before finetune.models.cpu_kernels)
        C.emit(['\n(variants ladder and per-layer table: with Chainer\'s own '
                'functions, not the CPU kernels)'])
        with C.chainer_functions_context():
            section_variants(args, weights, peak, figures)
        lap('variants')
    if 'ops' not in args.skip and not args.quick:
        import _variants
        _variants.apply(['mallopt'])
        with C.chainer_functions_context():
            section_ops(args, weights, figures)
        lap('ops')
    C.emit(['section times: ' + ', '.join('%s %.0f s' % kv
                                           for kv in LAPS[1:])])
    C.emit(['\ntotal time %.0f s' % (time.time() - start)])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
