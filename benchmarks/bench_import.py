#!/usr/bin/env python
"""Caffe import cost: convert a full-size AlexNet caffemodel, load the .npz.

    .venv/bin/python benchmarks/bench_import.py           # ~1 min
    .venv/bin/python benchmarks/bench_import.py --quick   # one round

Writes a random-weights BVLC AlexNet caffemodel in the V1 format of the
original bvlc_alexnet.caffemodel (61M parameters, ~233 MB) to a temporary
folder, then measures in child processes (each timed and its peak RSS read
with ``os.wait4``):

* ``python -m finetune.convert X.caffemodel --force``: wall time, peak RSS,
  peak RSS / caffemodel size (and net of the interpreter + imports),
* ``finetune.models.model_file.load_model(X.npz)`` and ``finetune.load(X.npz)``
  (default backend, which builds the OpenCV net on the CPU, and
  ``backend='chainer'``): time inside the child and its peak RSS,
* ``load_model`` with the net built with zero initial weights
  (MONKEYPATCHED in the child: what skipping the 61M random draws gains),
* a child that only imports the same modules (the RSS/time baseline).

The temporary files are removed at the end.
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

LOAD_CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import finetune, finetune.models.model_file
t1 = time.perf_counter()
what, path = sys.argv[1], sys.argv[2]
shipped = None
if what == 'load_model_zero_init':
    # MONKEYPATCHED: build the net with zero initial weights (they are
    # overwritten by the file) instead of drawing 61M random normals,
    # unless load_model already does (build_model takes initialW)
    import inspect
    import chainer
    shipped = 'initialW' in inspect.signature(
        finetune.models.model_file.build_model).parameters
    if not shipped:
        zero = chainer.initializers.Zero()
        for arch, cls in list(finetune.models.model_file.ARCHS.items()):
            finetune.models.model_file.ARCHS[arch] = (
                lambda cls: lambda n_classes, **kw: cls(
                    n_classes=n_classes, initialW=zero))(cls)
    what = 'load_model'
if what == 'load_model':
    model, meta, prep = finetune.models.model_file.load_model(path)
elif what == 'finetune.load':
    predictor = finetune.load(path)
elif what == 'finetune.load_chainer':
    predictor = finetune.load(path, backend='chainer')
t2 = time.perf_counter()
print(json.dumps({'import_s': t1 - t0, 'call_s': t2 - t1,
                  'zero_init_shipped': shipped}))
'''


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='one round')
    p.add_argument('--repeat', type=int, default=None,
                   help='rounds (median; default 3, 1 with --quick)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--unset-openblas-env', action='store_true')
    p.add_argument('--keep', help='write the files in this folder and keep '
                   'them (default: a temporary folder, removed)')
    p.add_argument('--write-only', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def timed_child(cmd):
    """Run ``cmd``; returns (wall s, peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            universal_newlines=True, cwd=C.ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode:
        raise RuntimeError('%s failed (%d)' % (' '.join(cmd),
                                               proc.returncode))
    return wall, usage.ru_maxrss / 1024.0, out


def write_alexnet(path):
    """A full-size random-weight V1 AlexNet; returns its parameter count."""
    from finetune.weights.random_model import write_random_alexnet
    weights = write_random_alexnet(path, seed=0)
    return sum(a.size for arrays in weights.values() for a in arrays)


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads, args.unset_openblas_env)
    if args.write_only:
        # a child: the parent stays small, because a child inherits the
        # parent's peak RSS in ru_maxrss (Linux records the old mm's
        # high-water mark at exec)
        print(write_alexnet(args.write_only))
        return 0
    start = time.time()
    C.emit(['# bench_import.py ' + ' '.join(sys.argv[1:])] +
           C.environment_report(args.threads, removed))
    folder = args.keep or tempfile.mkdtemp(prefix='bench_import_')
    os.makedirs(folder, exist_ok=True)
    caffemodel = os.path.join(folder, 'bvlc_alexnet_random.caffemodel')
    npz = os.path.splitext(caffemodel)[0] + '.npz'
    py = sys.executable
    try:
        wall, _, out = timed_child([py, os.path.abspath(__file__),
                                    '--write-only', caffemodel])
        params = int(out.strip().splitlines()[-1])
        size = os.path.getsize(caffemodel)
        C.emit(['wrote %s: %d parameters, %.1f MB (%.1f MiB), V1 format, '
                'in %.1f s (child process)' % (
                    os.path.basename(caffemodel), params, size / 1e6,
                    size / 2 ** 20, wall)])
        size_mib = size / 2 ** 20
        jobs = {
            'python -c "import finetune.convert" (baseline)':
                [py, '-c', 'import finetune.convert'],
            'python -m finetune.convert X.caffemodel --force':
                [py, '-m', 'finetune.convert', caffemodel, '--out', npz,
                 '--force'],
            'load_model(X.npz) child': [py, '-c', LOAD_CHILD, 'load_model',
                                        npz],
            'finetune.load(X.npz) child': [py, '-c', LOAD_CHILD,
                                           'finetune.load', npz],
            "finetune.load(X.npz, backend='chainer') child": [
                py, '-c', LOAD_CHILD, 'finetune.load_chainer', npz],
            'load_model, zero init (MONKEYPATCHED)': [
                py, '-c', LOAD_CHILD, 'load_model_zero_init', npz],
        }
        results = {name: [] for name in jobs}
        for _ in range(args.repeat):
            for name, cmd in jobs.items():
                results[name].append(timed_child(cmd))
        base_rss = C.median([r[1] for r in results[next(iter(jobs))]])
        rows = []
        for name, runs in results.items():
            wall = C.median([r[0] for r in runs])
            rss = C.median([r[1] for r in runs])
            inner = [json.loads(r[2].strip().splitlines()[-1])
                     for r in runs if r[2].strip().startswith('{')]
            call = C.median([i['call_s'] for i in inner]) if inner else None
            if inner and inner[0].get('zero_init_shipped'):
                name = 'load_model, zero init (already shipped: no patch)'
            rows.append((name, wall, '%.2f' % call if call is not None
                         else '-', rss, rss / size_mib,
                         (rss - base_rss) / size_mib))
        npz_size = os.path.getsize(npz)
        C.emit(C.table(
            ['child process', 'wall s', 'call s', 'peak RSS MiB',
             'RSS/file', '(RSS-base)/file'], rows,
            '\n== median of %d round(s); file = the caffemodel (%.0f MiB); '
            '.npz is %.0f MiB ==' % (args.repeat, size_mib,
                                     npz_size / 2 ** 20)))
        C.emit(['"call s": time inside the child for load_model / '
                'finetune.load alone (imports excluded); base = the '
                'import-only child (%.0f MiB)' % base_rss])
    finally:
        if not args.keep:
            for path in (caffemodel, npz, npz + '.lock'):
                if os.path.exists(path):
                    os.remove(path)
            try:
                os.rmdir(folder)
            except OSError:
                pass
    C.emit(['temporary files removed' if not args.keep else
            'files kept in %s' % folder,
            '\ntotal time %.0f s' % (time.time() - start)])
    return 0


if __name__ == '__main__':
    sys.exit(main())
