#!/usr/bin/env python
"""Batch labelling rate of ``python -m finetune.predict``: 1 vs 2 processes.

    .venv/bin/python benchmarks/bench_predict.py --quick    # ~5 min, 2 cores
    .venv/bin/python benchmarks/bench_predict.py            # ~15 min
    .venv/bin/python benchmarks/bench_predict.py --gpu 0 -j 4

Writes a temporary folder of 500x375 JPEGs and a random-weight BVLC
AlexNet model file (the real net's shapes and cost), then times, side by
side in one run, the whole command (``-o preds.csv``) for

* 1 process and ``mpiexec -n 2`` (2 ranks, each its own loader), on the
  OpenCV and the Chainer backends (on the CPU), or on the GPU with
  ``--gpu`` (each rank its own GPU, ``--gpu`` + local rank);
* the cost of durable chunks: ``--chunk 64`` (fsync every 64 rows, the
  resumable default is 1024) vs one chunk for the whole job;
* the resumption: a run killed at half, then the same command, vs one
  uninterrupted run.

The faster of two start-up runs on 1 image is subtracted from every
timing, so the rates are the labelling rates (start-up seconds are printed
apart). The rows of
every run are checked to be byte-identical. Figures come from whatever
else runs on the machine: rerun on an idle one for clean numbers.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='96 images instead of 384')
    p.add_argument('--images', type=int, default=None)
    p.add_argument('--gpu', type=int, default=-1,
                   help='GPU of rank 0 (-1: the CPU backends)')
    p.add_argument('-j', '--loaderjob', type=int, default=1,
                   help='loader processes per rank')
    p.add_argument('-B', '--batchsize', type=int, default=32)
    return p.parse_args(argv)


def make_images(folder, n):
    """``n`` 500x375 noisy JPEGs cut from the test photos."""
    import numpy as np
    from PIL import Image
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    sources = [np.asarray(Image.open(os.path.join(C.DATA, name)).convert(
        'RGB').resize((500, 375))) for name in ('cat.jpg', 'fish-bike.jpg')]
    for i in range(n):
        pixels = sources[i % 2].astype(np.int16) + rng.randint(
            -8, 9, sources[0].shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, '%04d.jpg' % i), quality=90)


def make_model(directory):
    from finetune.weights.random_model import write_random_alexnet
    caffemodel = os.path.join(directory, 'bvlc_alexnet.caffemodel')
    write_random_alexnet(caffemodel, seed=0, v1=False,
                         first_layer_scale=None)
    subprocess.run([sys.executable, '-m', 'finetune.convert', caffemodel,
                    '--out', directory], check=True, capture_output=True)
    os.remove(caffemodel)
    return os.path.join(directory, 'bvlc_alexnet.npz')


def mpiexec(n):
    if n == 1:
        return []
    command = ['mpiexec', '-n', str(n), '--oversubscribe', '--bind-to',
               'none']
    if os.geteuid() == 0:
        command.append('--allow-run-as-root')
    return command


def predict(model, images, out, ranks, args, backend, *extra):
    device = ['-d', str(args.gpu)] if args.gpu >= 0 else []
    return mpiexec(ranks) + [
        sys.executable, '-m', 'finetune.predict', '--model', model, images,
        '-o', out, '-B', str(args.batchsize), '-j', str(args.loaderjob),
        '--backend', backend, *device, *extra]


def timed(command, out):
    """Seconds of ``command`` (its output removed first)."""
    if os.path.exists(out):
        os.remove(out)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT='1',
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def killed_at_half(command, out, n):
    """Start ``command``, SIGKILL it when half the rows are in its journal
    (rows counted in the journal's chunk lines); returns seconds."""
    from finetune.inference.journal import journal_path
    if os.path.exists(out):
        os.remove(out)
    journal = journal_path(out)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               start_new_session=True)
    while process.poll() is None:
        try:
            with open(journal, 'rb') as f:
                rows = sum(int(line.split()[1]) for line in f
                           if line.startswith(b'chunk '))
        except OSError:
            rows = 0
        if rows >= n // 2:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    n = args.images or (96 if args.quick else 384)
    work = tempfile.mkdtemp(prefix='bench_predict_')
    try:
        run(args, n, work)
    finally:
        shutil.rmtree(work)


def run(args, n, work):
    images = os.path.join(work, 'images')
    make_images(images, n)
    one = os.path.join(work, 'one')
    make_images(one, 1)
    model = make_model(work)
    out = os.path.join(work, 'preds.csv')
    backends = ['chainer'] if args.gpu >= 0 else ['opencv', 'chainer']
    lines = ['%d images 500x375, AlexNet, batch %d, %d loader process(es) '
             'per rank, %s; %d CPU cores' % (
                 n, args.batchsize, args.loaderjob,
                 'GPU %d (+ local rank)' % args.gpu if args.gpu >= 0
                 else 'CPU', os.cpu_count())]
    rows, references = [], {}
    timed(predict(model, one, out, 1, args, backends[0]), out)  # warm-up
    for backend in backends:
        for ranks in (1, 2):
            startup = min(timed(predict(model, one, out, ranks, args,
                                        backend), out) for _ in range(2))
            total = timed(predict(model, images, out, ranks, args,
                                  backend), out)
            data = open(out, 'rb').read()
            references.setdefault(backend, data)
            rows.append([backend, ranks, '%.1f' % startup,
                         '%.1f' % (total - startup),
                         '%.1f' % (n / max(total - startup, 1e-9)),
                         'yes' if data == references[backend] else 'NO'])
    reference = references[backends[0]]
    lines += C.table(['backend', 'processes', 'start-up s', 'labelling s',
                      'images/s', 'CSV = 1 process'], rows)
    backend = backends[0]
    once = timed(predict(model, images, out, 1, args, backend, '--chunk',
                         str(n)), out)
    chunked = timed(predict(model, images, out, 1, args, backend,
                            '--chunk', '64'), out)
    first = killed_at_half(predict(model, images, out, 1, args, backend,
                                   '--chunk', '64'), out, n)
    rest = timed(predict(model, images, out, 1, args, backend, '--chunk',
                         '64'), out + '.none')
    same = open(out, 'rb').read() == reference
    lines += ['', '%s, 1 process: one chunk %.1f s; chunks of 64 (fsync '
              'each) %.1f s: x%.3f' % (backend, once, chunked,
                                      chunked / once),
              'killed at half %.1f s + resumed %.1f s = %.1f s: x%.3f of '
              'an uninterrupted run (same CSV: %s)' % (
                  first, rest, first + rest, (first + rest) / chunked,
                  'yes' if same else 'NO')]
    C.emit(lines)


if __name__ == '__main__':
    main()
