#!/usr/bin/env python
"""GPU benchmark (CuPy): training step and loader-fed prediction, images/s.

    .venv/bin/python benchmarks/bench_gpu.py [--gpu 0] [--quick]

Without CuPy or a CUDA device it prints one line, "no GPU (cupy not
importable / no device): skipped (<why>)", and exits 0; a GPU that is
found but fails (e.g. a kernel does not compile) is an error. On a GPU it
measures, for ``finetune.models.AlexNet`` (Chainer as shipped, cuDNN when
available):

* training-step images/s, full vs frozen trunk (conv1-conv5 under
  ``FineTuneNet(net, 5)``), CaffeSGD as ``finetune.train`` uses it, at
  several batch sizes;
* the same with ``--dtype float16`` as ``finetune.train`` sets it up
  (float16 weights, float32 masters, dynamic loss scaling) if the device
  runs it (a failure is reported, not fatal);
* prediction images/s of the model alone and end to end with
  ``finetune.data.loader.make_iterator`` decoding JPEGs in worker processes
  (the loader alone is timed too, so which side limits is visible).

``--cpu-dry-run`` runs the same code paths on NumPy with tiny sizes (float32
only), to check the script where no GPU is available (its numbers mean
nothing).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SKIP_LINE = 'no GPU (cupy not importable / no device): skipped'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--gpu', type=int, default=0)
    p.add_argument('--quick', action='store_true')
    p.add_argument('--batches', default=None,
                   help='train batch sizes (default 64,128,256)')
    p.add_argument('--predict-batch', type=int, default=256)
    p.add_argument('--repeat', type=int, default=10,
                   help='timed steps per measurement (default 10)')
    p.add_argument('--loaderjob', type=int, default=None,
                   help='loader workers (default: CPU count)')
    p.add_argument('--images', type=int, default=400,
                   help='JPEGs made for the loader test')
    p.add_argument('--no-fp16', action='store_true')
    p.add_argument('--cpu-dry-run', action='store_true',
                   help='exercise the code on NumPy, tiny sizes')
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = '64,128' if args.quick else '64,128,256'
    args.batches = [int(b) for b in args.batches.split(',')]
    if args.cpu_dry_run:
        args.batches, args.predict_batch, args.repeat = [2], 4, 1
        args.images, args.no_fp16 = 12, True  # float16 on NumPy: very slow
    if args.quick:
        args.repeat = min(args.repeat, 5)
        args.images = min(args.images, 200)
    if args.loaderjob is None:
        args.loaderjob = min(os.cpu_count() or 1, 8 if args.quick else 16)
    return args


def find_device(args):
    """The Chainer device, or None (reason printed in the skip line) when
    there is no usable GPU. A GPU that is found but fails is an error."""
    from finetune.common.errors import FinetuneError
    from finetune.common.gpu import device as gpu_device  # before chainer
    import chainer
    if args.cpu_dry_run:
        return chainer.get_device('@numpy')
    try:
        device = gpu_device(args.gpu)
    except FinetuneError as e:
        print('%s (%s)' % (SKIP_LINE, e))
        return None
    device.use()
    device.xp.zeros(1).sum()  # compiles and runs a kernel
    return device


def synchronize(device):
    if device.xp is not __import__('numpy'):
        device.device.synchronize()


def timed(fn, device, repeat, warmup=2):
    """Median seconds of ``fn`` (synchronized) over ``repeat`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return C.median(times)


def train_rates(device, batches, repeat, dtype, frozen):
    import chainer
    import numpy as np
    from finetune.models import AlexNet
    from finetune.training.solver import CaffeSGD, set_caffe_lr_policy
    from finetune.training.surgery import FineTuneNet
    from finetune.training.surgery import freeze_layers
    from finetune.training.surgery import set_param_dtype
    from finetune.training.extensions import Classifier
    rates = {}
    # as finetune.train --dtype sets it up
    net = AlexNet()
    set_param_dtype(net, dtype)
    model = Classifier(FineTuneNet(net, frozen))
    model.to_device(device)
    opt = CaffeSGD(lr=0.001, momentum=0.9)
    if dtype == np.float16:
        opt.use_fp32_update()
        opt.loss_scaling()
    opt.setup(model)
    set_caffe_lr_policy(net, net.layer_names[frozen:] if frozen else [],
                        5e-4)
    freeze_layers(net, net.layer_names[:frozen])
    rng = np.random.RandomState(0)
    for batch in batches:
        # float32 inputs in [-1, 1], as the loader hands them over (the net
        # casts them); the default-initialized net stays within float16
        # range (the timing does not depend on the values)
        x = device.send(rng.uniform(-1, 1, (batch, 3, 227, 227))
                        .astype(np.float32))
        t = device.send(rng.randint(0, 1000, batch).astype(np.int32))

        def step():
            with chainer.using_config('train', True):
                opt.update(model, x, t)
        rates[batch] = batch / timed(step, device, repeat)
    return rates


def predict_rates(device, args, dtype, folder, entries):
    """(model-only, loader-only, loader + model) images/s."""
    import chainer
    import numpy as np
    from chainer.dataset import concat_examples
    from finetune.data.datasets import LabeledImageDataset
    from finetune.data.loader import make_iterator
    from finetune.models import AlexNet
    from finetune.data.resources import imagenet_mean
    from finetune.data.transforms import CaffePreprocess
    batch = args.predict_batch
    with chainer.using_config('dtype', dtype):
        net = AlexNet()
    net.to_device(device)
    x = device.send(np.random.RandomState(0).uniform(
        -1, 1, (batch, 3, 227, 227)).astype(dtype))

    def forward(x):
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode(), \
                chainer.using_config('dtype', dtype):
            return net(x).array
    model_only = batch / timed(lambda: forward(x), device, args.repeat)

    prep = CaffePreprocess((256, 256), 227, imagenet_mean())
    dataset = LabeledImageDataset(folder, entries, prep, train=False)
    n_batches = max(2, min(args.repeat * 2, len(entries) // batch * 3))

    def run(with_model):
        it = make_iterator(dataset, batch, args.loaderjob, repeat=True,
                           shuffle=False)
        try:
            it.next()  # start-up excluded
            t0 = time.perf_counter()
            for _ in range(n_batches):
                xs, _ = concat_examples(it.next(), device)
                if with_model:
                    forward(xs.astype(dtype, copy=False))
            synchronize(device)
            return n_batches * batch / (time.perf_counter() - t0)
        finally:
            it.finalize() if hasattr(it, 'finalize') else None
    return model_only, run(False), run(True)


def main(argv=None):
    args = parse_args(argv)
    C.setup_threads(os.cpu_count() or 1)
    device = find_device(args)
    if device is None:
        return 0
    import chainer
    import numpy as np
    start = time.time()
    lines = ['# bench_gpu.py ' + ' '.join(sys.argv[1:]),
             'date: %s' % time.strftime('%Y-%m-%d %H:%M:%S %Z'),
             'chainer %s, device %s' % (chainer.__version__, device)]
    if not args.cpu_dry_run:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(args.gpu)
        lines.append('gpu: %s, cupy %s, cuDNN %s' % (
            props['name'].decode() if isinstance(props['name'], bytes)
            else props['name'], cupy.__version__,
            chainer.backends.cuda.cudnn_enabled))
        chainer.config.autotune = True
        chainer.config.cudnn_deterministic = False
    C.emit(lines)
    dtypes = [('float32', np.float32)]
    if not args.no_fp16:
        dtypes.append(('float16', np.float16))
    rows = []
    for name, dtype in dtypes:
        try:
            full = train_rates(device, args.batches, args.repeat, dtype, 0)
            frozen = train_rates(device, args.batches, args.repeat, dtype, 5)
        except Exception as e:  # fp16 unsupported, out of memory, ...
            C.emit(['%s training: failed: %s: %s' % (name, type(e).__name__,
                                                     e)])
            continue
        for batch in args.batches:
            rows.append((name, batch, full[batch], frozen[batch],
                         frozen[batch] / full[batch]))
    C.emit(C.table(['dtype', 'batch', 'full img/s', 'frozen img/s',
                    'frozen/full'], rows,
                   '\n== training step (CaffeSGD), median of %d =='
                   % args.repeat))

    import bench_loader
    folder = tempfile.mkdtemp(prefix='bench_gpu_')
    try:
        entries, _ = bench_loader.make_jpegs(folder, args.images)
        rows = []
        for name, dtype in dtypes:
            try:
                model, loader, both = predict_rates(device, args, dtype,
                                                    folder, entries)
            except Exception as e:
                C.emit(['%s predict: failed: %s: %s' % (
                    name, type(e).__name__, e)])
                continue
            rows.append((name, model, loader, both, both / model))
        C.emit(C.table(
            ['dtype', 'model only', 'loader only', 'loader + model',
             'fed/model'], rows,
            '\n== prediction img/s, batch %d, %d loader workers, %d JPEGs '
            '(500x375 / 1024x768) ==' % (args.predict_batch, args.loaderjob,
                                         len(entries))))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    C.emit(['\ntotal time %.0f s' % (time.time() - start)])
    return 0


if __name__ == '__main__':
    sys.exit(main())
