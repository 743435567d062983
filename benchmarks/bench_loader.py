#!/usr/bin/env python
"""Training-path image loading rate vs the model's consumption rate.

    .venv/bin/python benchmarks/bench_loader.py            # ~1.5 min
    .venv/bin/python benchmarks/bench_loader.py --quick    # < 1 min

Makes a temporary folder of JPEGs of realistic sizes (500x375 and 1024x768,
cut and scaled from the photos in tests/assets, with mild noise so they
compress like photos), then measures images/s of one process for

* decoding alone, with and without PIL draft mode (``read_image(path,
  size)`` vs ``read_image(path)``),
* the training path: ``CaffePreprocess`` decode + resize to 256x256 + mean
  subtraction (what a loader worker does), then the random 227 crop +
  mirror (what ``RandomCropConverter`` does in the main process), with and
  without draft mode,
* ``finetune.data.loader.make_iterator`` over ``LabeledImageDataset`` with 0
  (``SerialIterator``), 1 and 2 worker processes, crop included,

and compares them with the Chainer train-step rates at batch 32 (frozen
trunk on Chainer, frozen trunk on the default 'auto' backend (OpenCV dnn)
where this finetune has it, and full) measured in the same run, printing
how many workers a consumer at rate R needs (R / per-worker rate),
GPU-class rates included.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SIZES = ((500, 375), (1024, 768))
GPU_RATES = (100.0, 300.0, 1000.0, 3000.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='fewer images and batches (< 1.5 min)')
    p.add_argument('--images', type=int, default=None,
                   help='JPEGs to make (default 200; 60 with --quick)')
    p.add_argument('--threads', type=int, default=2,
                   help='BLAS/OpenMP threads (default 2)')
    p.add_argument('--unset-openblas-env', action='store_true',
                   help='unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE first')
    p.add_argument('--repeat', type=int, default=3,
                   help='rounds per measurement (median; default 3)')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--skip-model', action='store_true',
                   help='do not measure the Chainer train step')
    args = p.parse_args(argv)
    if args.images is None:
        args.images = 60 if args.quick else 200
    return args


def make_jpegs(folder, count, seed=0):
    """``count`` JPEGs alternating between SIZES; returns (entries, info)."""
    import glob
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(seed)
    sources = [Image.open(p).convert('RGB')
               for p in sorted(glob.glob(os.path.join(C.DATA, '*.jpg')))]
    entries, sizes = [], {s: [] for s in SIZES}
    for k in range(count):
        width, height = SIZES[k % len(SIZES)]
        src = sources[k % len(sources)]
        # a random crop of 60-100% of the photo, scaled to the target size
        frac = rng.uniform(0.6, 1.0)
        cw, ch = int(src.width * frac), int(src.height * frac)
        left = rng.randint(0, src.width - cw + 1)
        top = rng.randint(0, src.height - ch + 1)
        img = src.crop((left, top, left + cw, top + ch)).resize(
            (width, height), Image.LANCZOS)
        if rng.randint(2):
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(img, np.float32)
        pixels += rng.normal(0, 4, pixels.shape)  # photo-like entropy
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        name = 'img%04d_%dx%d.jpg' % (k, width, height)
        path = os.path.join(folder, name)
        img.save(path, quality=90)
        entries.append((name, k % 10))
        sizes[(width, height)].append(os.path.getsize(path))
    info = {s: (len(v), sum(v) / max(len(v), 1) / 1024)
            for s, v in sizes.items()}
    return entries, info


def per_image_rates(folder, entries, repeat):
    """Images/s of one process for each step, per image size and overall.

    Returns dict: (step, size or 'all') -> img/s.
    """
    import numpy as np
    from PIL import Image
    from finetune.data.resources import imagenet_mean
    from finetune.data.transforms import CaffePreprocess
    from finetune.data.transforms import read_image
    mean = imagenet_mean()
    uncropped = CaffePreprocess((256, 256), None, mean)
    cropper = CaffePreprocess((256, 256), 227, mean)
    rng = np.random.RandomState(0)

    def no_draft(path):
        img = Image.open(path)
        img.load()
        return img

    steps = {
        'decode, draft': lambda p: read_image(p, (256, 256)),
        'decode, no draft': lambda p: read_image(p),
        'worker: decode+resize+mean, draft':
            lambda p: uncropped.image_array(p),
        'worker: decode+resize+mean, no draft':
            lambda p: uncropped.image_array(no_draft(p)),
        'train path (worker + crop/mirror), draft':
            lambda p: cropper.crop(uncropped.image_array(p), True, rng),
        'train path (worker + crop/mirror), no draft':
            lambda p: cropper.crop(uncropped.image_array(no_draft(p)), True,
                                   rng),
    }
    groups = {s: [os.path.join(folder, n) for n, _ in entries
                  if n.endswith('%dx%d.jpg' % s)] for s in SIZES}
    groups['all'] = [os.path.join(folder, n) for n, _ in entries]

    def loop(fn, paths):
        return lambda: [fn(p) for p in paths]

    fns = {(step, size): loop(fn, paths)
           for step, fn in steps.items() for size, paths in groups.items()}
    recs = C.interleaved(fns, repeat, warmup=0, pause=0)
    return {key: len(groups[key[1]]) / C.median(rec['times'])
            for key, rec in recs.items()}, list(steps)


def iterator_rate(folder, entries, batch, jobs, batches):
    """Images/s through make_iterator + RandomCropConverter (crop in this
    process), after the first batch (worker start-up excluded)."""
    from finetune.data.datasets import LabeledImageDataset
    from finetune.data.loader import make_iterator
    from finetune.data.resources import imagenet_mean
    from finetune.training.extensions import RandomCropConverter
    from finetune.data.transforms import CaffePreprocess
    mean = imagenet_mean()
    uncropped = CaffePreprocess((256, 256), None, mean)
    converter = RandomCropConverter(CaffePreprocess((256, 256), 227, mean),
                                    seed=0)
    dataset = LabeledImageDataset(folder, entries, uncropped, train=True,
                                  seed=0)
    it = make_iterator(dataset, batch, jobs, seed=0)
    try:
        t_start = time.perf_counter()
        converter(it.next())
        startup = time.perf_counter() - t_start
        t0 = time.perf_counter()
        for _ in range(batches):
            x, t = converter(it.next())
        elapsed = time.perf_counter() - t0
    finally:
        if hasattr(it, 'finalize'):
            it.finalize()
    assert x.shape == (batch, 3, 227, 227)
    return batches * batch / elapsed, startup


def model_rates(batch, repeat):
    """Chainer train-step img/s (as shipped) at ``batch``: frozen trunk on
    Chainer, frozen trunk on the default backend ('auto': OpenCV dnn, where
    this finetune has it), full."""
    import bench_model as M
    from finetune.weights.random_model import write_random_alexnet
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_alexnet(os.path.join(tmp, 'a.caffemodel'),
                                       seed=0)
    x, t = M.inputs(batch)
    fns = {'frozen': M.chainer_train_fn(M.chainer_net(weights), x, t, 5),
           'frozen, default trunk': M.chainer_train_fn(
               M.chainer_net(weights), x, t, 5, 'auto'),
           'full': M.chainer_train_fn(M.chainer_net(weights), x, t, 0)}
    fns = {k: v for k, v in fns.items() if v is not None}
    recs = C.interleaved(fns, repeat, 1)
    return {k: C.rate(v, batch) for k, v in recs.items()}


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads, args.unset_openblas_env)
    start = time.time()
    import PIL
    C.emit(['# bench_loader.py ' + ' '.join(sys.argv[1:])] +
           C.environment_report(args.threads, removed) +
           ['pillow %s' % PIL.__version__])
    folder = tempfile.mkdtemp(prefix='bench_loader_')
    try:
        entries, info = make_jpegs(folder, args.images)
        C.emit(['%d JPEGs (quality 90): ' % len(entries) + ', '.join(
            '%d x %dx%d (mean %.0f KiB)' % (n, w, h, kib)
            for (w, h), (n, kib) in info.items())])
        rates, steps = per_image_rates(folder, entries, args.repeat)
        rows = []
        for step in steps:
            rows.append([step] + [rates[(step, s)] for s in SIZES + ('all',)])
        C.emit(C.table(['one process, img/s'] + ['%dx%d' % s for s in SIZES]
                       + ['mix'], rows,
                       '\n== per-process rates (median of %d passes over '
                       'the files) ==' % args.repeat))
        gain = [rates[('decode, draft', s)] / rates[('decode, no draft', s)]
                for s in SIZES]
        C.emit(['draft mode speeds decoding up %s (%s)' % (
            ', '.join('%.2fx' % g for g in gain),
            ', '.join('%dx%d' % s for s in SIZES))])
        worker = rates[('train path (worker + crop/mirror), draft', 'all')]
        worker_nd = rates[('train path (worker + crop/mirror), no draft',
                           'all')]

        batches = 6 if args.quick else 12
        it_rows = []
        serial = None
        for jobs in (0, 1, 2):
            r, startup = iterator_rate(folder, entries, args.batch, jobs,
                                       batches)
            serial = serial or r
            it_rows.append(('SerialIterator' if jobs == 0 else
                            'Multiprocess, %d worker%s' % (
                                jobs, 's' if jobs > 1 else ''),
                            r, r / serial, startup))
        C.emit(C.table(['make_iterator (+ crop converter)', 'img/s',
                        'vs serial', 'first batch s'], it_rows,
                       '\n== through finetune.data.loader.make_iterator, batch '
                       '%d, %d batches after the first ==' % (args.batch,
                                                              batches)))

        consumers = []
        if not args.skip_model:
            m = model_rates(args.batch, args.repeat)
            consumers += [('Chainer frozen-trunk step (this CPU)',
                           m['frozen'])]
            if 'frozen, default trunk' in m:
                consumers += [('frozen step, OpenCV trunk (this CPU)',
                               m['frozen, default trunk'])]
            consumers += [('Chainer full train step (this CPU)', m['full'])]
        consumers += [('GPU-class consumer', r) for r in GPU_RATES]
        rows = [(name, rate, rate / worker, rate / worker_nd)
                for name, rate in consumers]
        C.emit(C.table(
            ['consumer', 'R img/s', 'workers (draft)', 'workers (no draft)'],
            rows,
            '\n== workers needed = R / per-worker rate (%.0f img/s with '
            'draft, %.0f without; 1024x768/500x375 mix) ==' % (worker,
                                                               worker_nd)))
        C.emit(['note: this machine has %d cores; a worker rate assumes '
                'one free core per worker' % os.cpu_count()])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    C.emit(['\ntotal time %.0f s' % (time.time() - start)])
    return 0


if __name__ == '__main__':
    sys.exit(main())
