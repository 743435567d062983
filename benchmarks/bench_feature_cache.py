"""Frozen-trunk feature cache: head-only training vs recomputing the trunk.

Three parts, all with the shipped code (``finetune.training.fit``):

1. Training loop, images/s (AlexNet, ``--freeze conv1-conv5 --replace
   fc6-fc8``, random weights: speed does not depend on them): steady-state
   training steps, loader included, interleaved round by round, for
   recomputing the trunk on Chainer, recomputing it on OpenCV (the
   default), and ``--cache-features``; plus the cached head with the
   optimizer as it was before ``finetune.training.solver`` (MomentumSGD with the
   WeightDecay hook and a rate hook). Prints the arithmetic bound on the
   ratio: (trunk + head FLOPs) / head FLOPs.
2. Whole runs: seconds per epoch from the training log (evaluation,
   snapshots and plots included), and the cache build time.
3. Accuracy with crops on real weights: the Caffe-trained LeNet
   (``examples/lenet``) converted with ``--resize 32`` (random 28x28 crops)
   is fine-tuned on scikit-learn's real handwritten digits, cached and
   uncached, over several seeds; paired differences of the final
   validation accuracy. ``--corner-crops`` adds the rejected crop set
   (corners + center, mirrored: Caffe's 10-crop), MONKEYPATCHED in.

    .venv/bin/python benchmarks/bench_feature_cache.py [--quick]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


MODES = (('recompute, Chainer trunk', {'trunk_backend': 'chainer'}),
         ('recompute, OpenCV trunk', {'trunk_backend': 'opencv'}),
         ('cached features', {'cache_features': True}),
         ('cached, optimizer before', {'cache_features': True}))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='batch 32 only, 2 rounds, 4 seeds, no whole runs')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batches', default='32,128')
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--per-class', type=int, default=40,
                   help='jittered views per photo class (3 classes)')
    p.add_argument('--loaderjob', type=int, default=2)
    p.add_argument('--freeze', default='conv1-conv5',
                   help='frozen layers of parts 1 and 2')
    p.add_argument('--replace', default='fc6-fc8',
                   help='new head of parts 1 and 2 (Flickr-Style: '
                   '--freeze conv1-fc7 --replace fc8)')
    p.add_argument('--epochs', type=int, default=4,
                   help='epochs of the whole runs (part 2)')
    p.add_argument('--run-per-class', type=int, default=200,
                   help='views per class of the whole runs (part 2): '
                   'per-epoch costs (evaluation, snapshot, plots) weigh '
                   'less on more images')
    p.add_argument('--seeds', type=int, default=12,
                   help='seeds of the accuracy comparison (part 3)')
    p.add_argument('--corner-crops', action='store_true',
                   help='part 3 also with the corner+center crop set')
    p.add_argument('--skip', default='',
                   help="comma-separated parts to skip: 'loop,runs,accuracy'")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.seeds = '32', 2, 4
        args.skip += ',runs'
    args.batches = [int(b) for b in args.batches.split(',')]
    args.skip = set(args.skip.split(','))
    return args


def write_photo_classes(out_dir, per_class, seed=0):
    """``out_dir/<photo>/<n>.jpg``: jittered views of each real photo."""
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(seed)
    for photo in ('cat.jpg', 'fish-bike.jpg', 'cat_gray.jpg'):
        source = Image.open(os.path.join(C.DATA, photo)).convert('RGB')
        folder = os.path.join(out_dir, photo.split('.')[0])
        os.makedirs(folder)
        width, height = source.size
        for i in range(per_class):
            scale = rng.uniform(0.5, 1.0)
            w, h = int(width * scale), int(height * scale)
            left = rng.randint(0, width - w + 1)
            top = rng.randint(0, height - h + 1)
            view = source.crop((left, top, left + w, top + h))
            if rng.randint(2):
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            pixels = np.asarray(view, np.float32) * rng.uniform(0.7, 1.3, 3)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, '%03d.jpg' % i), quality=90)
    return out_dir


def quietly(fn, *args):
    """``fn(*args)`` with its output (progress bars, reports, which hold
    the original ``sys.stdout``) sent to /dev/null at the descriptor
    level."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        return fn(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def step_gflop(frozen, n_classes):
    """(trunk forward, head step) GFLOP per image of AlexNet with its
    first ``frozen`` layers frozen and ``n_classes`` outputs: the head
    step is the forward, weight gradients and input gradients (but the
    first trained layer's) of the remaining layers."""
    macs = dict(C.ALEXNET_MACS, fc8=4096 * n_classes)
    names = list(C.ALEXNET_MACS)
    trunk = sum(macs[n] for n in names[:frozen])
    head = sum(macs[n] for n in names[frozen:])
    return 2 * trunk / 1e9, 2 * (2 * head + head - macs[names[frozen]]) / 1e9


def train_config(data, pretrained, out, batch, loaderjob, extra, freeze,
                 replace):
    """The TrainConfig of these options (``extra``: keyword overrides)."""
    from finetune.training.config import TrainConfig
    return TrainConfig(data=data, pretrained=pretrained, out=out,
                       freeze=freeze, replace=replace, batchsize=batch,
                       val_split=0.25, loaderjob=loaderjob, log_interval=0,
                       snapshot_interval=100000, **extra)


def hooks_optimizer(run, config):
    """The optimizer as before finetune.training.solver, from Chainer's own
    pieces: MomentumSGD with a per-parameter rate (Caffe's lr_mult: the
    head's multiplier, 2 on biases) and Chainer's WeightDecay hook on the
    weights."""
    import chainer
    net = run.network
    optimizer = chainer.optimizers.MomentumSGD(lr=config.lr,
                                               momentum=config.momentum)
    optimizer.setup(run.model)
    for name in net.layer_names:
        for param_name, param in net[name].namedparams():
            is_bias = param_name.endswith('/b')
            param.update_rule.hyperparam.lr = config.lr * (
                config.head_lr_mult if name in run.head else 1) * (
                2.0 if is_bias else 1)
            if not is_bias:
                param.update_rule.add_hook(
                    chainer.optimizer_hooks.WeightDecay(config.weight_decay))
    for name in run.frozen:
        net[name].disable_update()
    return optimizer


def training_loop(args, work, data, caffemodel):
    """Part 1: steady-state images/s of each mode, interleaved."""
    from finetune.training.distributed import ranks_for
    from finetune.training.extensions import SeededUpdater
    from finetune.training.fit import assemble
    lines = []
    for batch in args.batches:
        updaters, jobs, built = {}, [], {}
        for name, extra in MODES:
            config = train_config(
                data, caffemodel, os.path.join(work, 'loop'), batch,
                args.loaderjob, extra, args.freeze, args.replace)
            start = time.perf_counter()
            job = quietly(assemble, config, ranks_for(None))
            built[name] = time.perf_counter() - start
            jobs.append(job)
            optimizer = job.optimizer
            if name == 'cached, optimizer before':
                optimizer = hooks_optimizer(job, config)
            updaters[name] = SeededUpdater(job.inputs.train_iter, optimizer,
                                           job.inputs.converter, job.device)
        steps = max(1, 64 // batch)
        fns = {name: (lambda u=u: [u.update() for _ in range(steps)])
               for name, u in updaters.items()}
        try:
            recs = C.interleaved(fns, args.rounds)
        finally:
            for job in jobs:
                job.inputs.finalize()
        peak = C.matmul_peak(sizes=(2048,), repeat=3)['peak']
        trunk_gflop, head_gflop = step_gflop(
            jobs[0].model.predictor.n_frozen_layers,
            len(jobs[0].class_names))
        rows = []
        cached = 'cached features'
        for name, _ in MODES:
            rate = C.rate(recs[name], batch * steps)
            gflop = head_gflop + (trunk_gflop if name.startswith(
                'recompute') else 0)
            rows.append([name, rate, C.paired_ratio(recs, cached, name),
                         100 * rate * gflop / peak, built[name]])
        lines += C.table(
            ['mode', 'img/s', 'cached x', '%pk', 'set-up s'], rows,
            '\n== training loop, --freeze %s --replace %s, batch %d (%d '
            'steps per round, %d rounds, median; "cached x" = paired ratio '
            'of the cached run\'s rate to this row\'s) ==' % (
                args.freeze, args.replace, batch, steps, args.rounds))
        lines.append('arithmetic bound on cached x: (trunk forward + head '
                     'step) / head step = (%.4g + %.4g) / %.4g GFLOP per '
                     'image = %.3gx; GEMM peak %.0f GFLOP/s; set-up s '
                     'includes building the cache (first batch size only)'
                     % (trunk_gflop, head_gflop, head_gflop,
                        (trunk_gflop + head_gflop) / head_gflop, peak))
        C.emit(lines[-(len(rows) + 4):])
    return lines


def whole_runs(args, work, caffemodel):
    """Part 2: seconds per epoch from the logs of complete runs."""
    import numpy as np
    from finetune.training.fit import fit
    data = write_photo_classes(os.path.join(work, 'photos_runs'),
                               args.run_per_class, seed=1)
    rows = []
    for name, extra in MODES[:3]:
        out = os.path.join(work, 'run%d' % len(rows))
        start = time.time()
        quietly(fit, train_config(
            data, caffemodel, out, args.batches[0], args.loaderjob,
            dict(extra, epochs=args.epochs), args.freeze, args.replace))
        log = json.load(open(os.path.join(out, 'log')))
        per_epoch = np.diff([0.0] + [e['elapsed_time'] for e in log])
        rows.append([name, time.time() - start, per_epoch[0],
                     float(np.median(per_epoch[1:]))])
    lines = C.table(['run', 'total s', 'epoch 1 s', 'epoch 2+ s'], rows,
                    '\n== whole runs, %d images, %d epochs, batch %d '
                    '(evaluation, snapshots and plots included; the cache '
                    'build is in the cached run\'s total, before epoch 1) '
                    '==' % (
                        3 * args.run_per_class, args.epochs,
                        args.batches[0]))
    fast = rows[2][3]
    lines += ['cached epoch vs %s: %.1fx' % (r[0], r[3] / fast)
              for r in rows[:2]]
    C.emit(lines)
    return lines


def corner_crops(preprocess, index, mode, count=10):
    """MONKEYPATCH: Caffe's 10-crop set (4 corners + center, mirrored)."""
    if preprocess.crop_size is None or mode == 'center':
        return [preprocess.crop_window()]
    height, width = preprocess.size
    side = preprocess.crop_size
    center = preprocess.crop_window()[:2]
    corners = [(0, 0), (0, width - side), (height - side, 0),
               (height - side, width - side), center]
    return [c + (m,) for m in (False, True) for c in corners]


def accuracy(args, work):
    """Part 3: cached vs uncached validation accuracy, real LeNet."""
    import numpy as np
    import finetune.data.feature_cache as feature_cache
    from finetune.demo import convert_lenet, write_digit_folders
    from finetune.training.config import TrainConfig
    from finetune.training.fit import fit
    data = write_digit_folders(os.path.join(work, 'digits'))
    lenet = convert_lenet(work, resize=(32, 32))
    cached = {'cache_features': True}
    arms = [('uncached', {}, None), ('cached', cached, None)]
    if args.corner_crops:
        arms.append(('corner crops', cached, corner_crops))
    results = {name: [] for name, _, _ in arms}
    shipped = feature_cache.crop_windows
    for seed in range(args.seeds):
        for name, extra, windows in arms:
            feature_cache.crop_windows = windows or shipped
            out = os.path.join(work, 'acc_%s_%d' % (name[:6], seed))
            try:
                result = quietly(fit, TrainConfig(
                    data=data, pretrained=lenet, out=out,
                    freeze='conv1-conv2', replace='ip1-ip2', epochs=8,
                    batchsize=16, val_split=0.5, loaderjob=0, seed=seed,
                    log_interval=0, **extra))
            finally:
                feature_cache.crop_windows = shipped
            results[name].append(result.metrics['top1_accuracy'])
            shutil.rmtree(out)
    base = np.array(results['uncached'])
    rows = []
    for name, _, _ in arms:
        acc = np.array(results[name])
        diff = 100 * (acc - base)
        paired = name != 'uncached'
        rows.append([name, '%.4f' % acc.mean(), '%.4f' % acc.std(ddof=1),
                     '%+.2f' % diff.mean() if paired else '-',
                     '%.2f' % (diff.std(ddof=1) / np.sqrt(len(diff)))
                     if paired else '-',
                     ' '.join('%+.1f' % d for d in diff) if paired else
                     ' '.join('%.3f' % a for a in acc)])
    lines = C.table(
        ['run', 'mean acc', 'sd', 'diff pts', 'se',
         'per seed (accuracy; difference in points)'], rows,
        '\n== validation accuracy, Caffe LeNet, 1,797 sklearn digits (half '
        'validation), --resize 32 (28x28 crops), conv1-conv2 frozen, '
        'ip1-ip2 new, 8 epochs, %d seeds ==' % args.seeds)
    C.emit(lines)
    return lines


def main(argv=None):
    args = parse_args(argv)
    C.setup_threads(args.threads)
    from finetune.common.allocator import keep_freed_memory
    keep_freed_memory()  # as the finetune.train command does
    C.emit(['# bench_feature_cache.py ' + ' '.join(sys.argv[1:])]
           + C.environment_report(args.threads, {}))
    from finetune.weights.random_model import write_random_alexnet
    work = tempfile.mkdtemp(prefix='bench_cache_')
    start = time.time()
    try:
        data = write_photo_classes(os.path.join(work, 'photos'),
                                   args.per_class)
        caffemodel = os.path.join(work, 'bvlc_alexnet.caffemodel')
        write_random_alexnet(caffemodel)
        C.emit(['%d images in 3 classes (75 %% train), AlexNet with random '
                'weights, %d loader workers' % (3 * args.per_class,
                                                args.loaderjob)])
        if 'loop' not in args.skip:
            training_loop(args, work, data, caffemodel)
        if 'runs' not in args.skip:
            whole_runs(args, work, caffemodel)
        if 'accuracy' not in args.skip:
            accuracy(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('\ntotal time %.0f s' % (time.time() - start))


if __name__ == '__main__':
    sys.exit(main())
