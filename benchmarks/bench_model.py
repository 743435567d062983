#!/usr/bin/env python
"""AlexNet on this CPU: Chainer (this project) vs PyTorch vs OpenCV dnn.

    .venv/bin/python benchmarks/bench_model.py            # ~7 min
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
    ``FineTuneNet(net, 5)`` + MomentumSGD vs PyTorch with the trunk under
    ``torch.no_grad()``,

the ratio Chainer/PyTorch, the fraction of the float32 GEMM rate measured
on this machine, and user vs system CPU time of the Chainer forward. It then
runs the Chainer forward in child processes with glibc malloc tuned through
the environment, side by side with the default, and finally measures a
ladder of MONKEYPATCHED variants (benchmarks/_variants.py) that estimate
what changes to the project would gain. All timings of one table are taken
interleaved (round-robin, median of --repeat rounds) in this one run.
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
                   help='timed rounds per measurement (median; default 3)')
    p.add_argument('--threads', type=int, default=2,
                   help='threads of every framework (default 2)')
    p.add_argument('--unset-openblas-env', action='store_true',
                   help='unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE first')
    p.add_argument('--variant-batch', type=int, default=32,
                   help='batch of the monkeypatched-variant ladder')
    p.add_argument('--skip', default='',
                   help='comma-separated sections to skip: peak,forward,'
                   'train,frozen,malloc,variants')
    p.add_argument('--profile', action='store_true',
                   help='only print cProfile tables of the Chainer forward '
                   '(as shipped and with all variants) and exit')
    p.add_argument('--json', help='also write the figures to this file')
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
        args.repeat = 3
    args.skip = set(filter(None, args.skip.split(',')))
    return args


# ---------------------------------------------------------------- models
def torch_alexnet(n_classes=1000):
    import torch.nn as nn
    import torch.nn.functional as F

    class TorchAlexNet(nn.Module):
        """BVLC AlexNet in PyTorch, Caffe layout (see models/alexnet.py)."""

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


def random_caffe_weights(seed=0):
    """BVLC-layout random weights (conv1 / 100 so activations stay ~1)."""
    import chainer
    import numpy as np
    from finetune.caffe.writer import random_weights
    from finetune.models import AlexNet
    skeleton = AlexNet(initialW=chainer.initializers.Zero())
    weights = random_weights(skeleton, np.random.RandomState(seed))
    weights['conv1'][0] /= 100
    return weights


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
def chainer_forward_fn(net, x):
    import chainer

    def run():
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            return net(x).array
    return run


def chainer_train_fn(net, x, t, frozen):
    """One MomentumSGD step (lr 0.001, momentum 0.9, weight decay 5e-4),
    as finetune.train sets it up: Classifier(FineTuneNet(net, frozen))."""
    import chainer
    from finetune.surgery import FineTuneNet
    from finetune.surgery import freeze_layers
    from finetune.training import Classifier
    model = Classifier(FineTuneNet(net, frozen))
    opt = chainer.optimizers.MomentumSGD(lr=0.001, momentum=0.9)
    opt.setup(model)
    opt.add_hook(chainer.optimizer_hooks.WeightDecay(5e-4))
    freeze_layers(net, net.layer_names[:frozen])

    def run():
        with chainer.using_config('train', True):
            opt.update(model, x, t)
    return run


def torch_forward_fn(net, x):
    import torch
    xt = torch.from_numpy(x)
    net.eval()

    def run():
        with torch.no_grad():
            return net(xt).numpy()
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
    import resource
    import _variants
    if args.child_variants:
        _variants.apply(args.child_variants.split(','))
    import chainer  # noqa: F401
    from finetune.models import AlexNet
    net = AlexNet()
    x, _ = inputs(args.child_forward)
    run = chainer_forward_fn(net, x)
    recs = C.interleaved({'f': run}, args.child_calls, 1)['f']
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({'img_s': C.rate(recs, args.child_forward),
                      'utime': recs['utime'], 'stime': recs['stime'],
                      'minflt': recs['minflt'], 'maxrss_mb': ru.ru_maxrss /
                      1024}))
    return 0


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
    sizes = (2048,) if args.quick else (2048, 4096)
    peak = C.matmul_peak(sizes, repeat=args.repeat if args.quick else 5)
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
        fns = {'chainer': chainer_forward_fn(cnet, x),
               'pytorch': torch_forward_fn(tnet, x),
               'opencv': opencv_forward_fn(C.DEPLOY, caffemodel, x)}
        if i == 0:
            ref = fns['opencv']()
            errs = {k: rel_err(fns[k](), ref) for k in ('chainer', 'pytorch')}
            C.emit(['\nsame network check (logits vs OpenCV, rel. error): '
                    'Chainer %.1e, PyTorch %.1e' % (errs['chainer'],
                                                    errs['pytorch'])])
        recs = C.interleaved(fns, args.repeat,
                             {'chainer': int(i == 0), 'pytorch': 1,
                              'opencv': 1})
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        rows.append((batch, r['chainer'], r['pytorch'], r['opencv'],
                     r['chainer'] / r['pytorch'], r['opencv'] / r['pytorch'],
                     pct(r['chainer'], C.FORWARD_GFLOP, peak),
                     pct(r['pytorch'], C.FORWARD_GFLOP, peak),
                     pct(r['opencv'], C.FORWARD_GFLOP, peak)))
        c = recs['chainer']
        cpu_rows.append((batch, median_time(c), c['utime'], c['stime'],
                         100 * c['stime'] / max(c['utime'] + c['stime'],
                                                1e-9), c['minflt']))
        figures.setdefault('forward', {})[batch] = r
    C.emit(C.table(
        ['batch', 'chainer', 'pytorch', 'opencv', 'ch/pt', 'cv/pt',
         'ch %pk', 'pt %pk', 'cv %pk'], rows,
        '\n== forward (inference), images/s; %pk = % of GEMM peak =='))
    C.emit(C.table(
        ['batch', 'wall s', 'user s', 'sys s', 'sys %', 'minflt'], cpu_rows,
        '\n== Chainer forward CPU time per call (getrusage, median) =='))


def median_time(rec):
    return C.median(rec['times'])


def section_train(args, weights, peak, figures, frozen):
    key = 'frozen' if frozen else 'train'
    gflop = C.FROZEN_GFLOP if frozen else C.TRAIN_GFLOP
    rows = []
    cnet, tnet = chainer_net(weights), torch_net(weights)
    for i, batch in enumerate(args.batches):
        x, t = inputs(batch)
        fns = {'chainer': chainer_train_fn(cnet, x, t, 5 if frozen else 0),
               'pytorch': torch_train_fn(tnet, x, t, frozen)}
        recs = C.interleaved(fns, args.repeat,
                             {'chainer': int(i == 0), 'pytorch': 1})
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        rows.append((batch, r['chainer'], r['pytorch'],
                     r['chainer'] / r['pytorch'],
                     pct(r['chainer'], gflop, peak),
                     pct(r['pytorch'], gflop, peak)))
        figures.setdefault(key, {})[batch] = r
    title = ('frozen-trunk fine-tuning step (conv1-conv5 frozen, fc6-fc8 '
             'trained)' if frozen else 'full training step (all layers)')
    C.emit(C.table(['batch', 'chainer', 'pytorch', 'ch/pt', 'ch %pk',
                    'pt %pk'], rows,
                   '\n== %s, images/s ==' % title))


def section_malloc(args, figures):
    batch = args.batches[0]
    configs = [('default', {}, ''),
               ('MALLOC_* env', C_malloc_env(), '')]
    if not args.quick:
        configs += [('MALLOC_ARENA_MAX=2', {'MALLOC_ARENA_MAX': '2'}, ''),
                    ('mallopt() in process', {}, 'mallopt')]
    rounds = 1 if args.quick else 2
    calls = 2 if args.quick else args.repeat
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
                     C.median([r['maxrss_mb'] for r in rs])))
        figures.setdefault('malloc', {})[name] = img_s
    C.emit(C.table(
        ['malloc setting', 'img/s', 'vs default', 'user s', 'sys s',
         'minflt', 'maxrss MB'], rows,
        '\n== Chainer forward (batch %d) in child processes, %d round(s) '
        'interleaved ==' % (batch, rounds)))
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
    ('+ threads: im2col/pool/LRN on 2 threads', ['threads']),
    ('+ detach frozen features', ['detach']),
]
LADDER_QUICK = [
    ('as shipped', []),
    ('+ mallopt: keep freed heap', ['mallopt']),
    ('+ conv, pool, lrn, threads, detach',
     ['conv', 'pool', 'lrn', 'threads', 'detach']),
]


def section_variants(args, weights, peak, figures):
    import _variants
    batch = args.variant_batch
    x, t = inputs(batch)
    tnet_f, tnet_ft = torch_net(weights), torch_net(weights)
    tfns = {'pt fwd': torch_forward_fn(tnet_f, x),
            'pt frozen': torch_train_fn(tnet_ft, x, t, True)}
    rows = []
    applied = []
    first = prev = None
    ref_logits = None
    ladder = LADDER_QUICK if args.quick else LADDER
    rounds = 2 if args.quick else args.repeat
    for label, names in ladder:
        applied += _variants.apply(names)
        cnet_f, cnet_ft = chainer_net(weights), chainer_net(weights)
        fns = {'ch fwd': chainer_forward_fn(cnet_f, x),
               'ch frozen': chainer_train_fn(cnet_ft, x, t, 5)}
        fns.update(tfns)
        logits = fns['ch fwd']()
        if ref_logits is None:
            ref_logits = logits
        err = rel_err(logits, ref_logits)
        recs = C.interleaved(fns, rounds, 1)
        r = {k: C.rate(v, batch) for k, v in recs.items()}
        if first is None:
            first = prev = r
        rows.append((label, r['ch fwd'], r['ch fwd'] / r['pt fwd'],
                     r['ch fwd'] / prev['ch fwd'],
                     r['ch frozen'], r['ch frozen'] / r['pt frozen'],
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
    pt = figures['variants'][ladder[-1][0]]
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
                         args.repeat, 1)
    r = {k: C.rate(v, batch) for k, v in recs.items()}
    shipped = figures.get('train', {}).get(batch, {}).get('chainer')
    C.emit(['full training step with all variants (MONKEYPATCHED), batch '
            '%d: Chainer %.1f img/s, PyTorch %.1f, ratio %.2f%s'
            % (batch, r['chainer'], r['pytorch'],
               r['chainer'] / r['pytorch'],
               ', vs as-shipped Chainer %.2fx (measured in the train '
               'section)' % (r['chainer'] / shipped) if shipped else '')])
    figures['variants_train'] = r


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
    weights = random_caffe_weights()
    x, _ = inputs(args.variant_batch)
    for label, names in (('as shipped', []),
                         ('all variants (MONKEYPATCHED)', list(
                             _variants.ALL))):
        _variants.apply(names)
        run = chainer_forward_fn(chainer_net(weights), x)
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


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads, args.unset_openblas_env)
    if args.child_forward:
        return child_forward(args)
    start = time.time()
    import cv2
    import numpy as np  # noqa: F401
    import torch
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.profile:
        return profile(args)
    import chainer
    C.emit(['# bench_model.py ' + ' '.join(sys.argv[1:])] +
           C.environment_report(args.threads, removed) +
           ['chainer %s, torch %s (torch threads %d), opencv %s (threads %d)'
            % (chainer.__version__, torch.__version__,
               torch.get_num_threads(), cv2.__version__,
               cv2.getNumThreads()),
            'batches %s, %d timed rounds each (median), interleaved'
            % (args.batches, args.repeat)])
    C.emit(pooling_pad_report())
    figures = {}
    peak = 1.0
    if 'peak' not in args.skip:
        peak = section_peak(args, figures)
    weights = random_caffe_weights()
    from finetune.caffe.caffemodel import read_prototxt_param
    from finetune.caffe.writer import write_caffemodel
    with tempfile.TemporaryDirectory() as tmp:
        caffemodel = os.path.join(tmp, 'alexnet_random.caffemodel')
        write_caffemodel(caffemodel, read_prototxt_param(C.DEPLOY), weights,
                         v1=True)
        if 'forward' not in args.skip:
            section_forward(args, weights, caffemodel, peak, figures)
    if 'train' not in args.skip:
        section_train(args, weights, peak, figures, frozen=False)
    if 'frozen' not in args.skip:
        section_train(args, weights, peak, figures, frozen=True)
    if 'malloc' not in args.skip:
        section_malloc(args, figures)
    if 'variants' not in args.skip:
        section_variants(args, weights, peak, figures)
    C.emit(['\ntotal time %.0f s' % (time.time() - start)])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
