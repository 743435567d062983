#!/usr/bin/env python
"""Peak memory of training runs: the main process, each loader worker and
the whole process tree (issue 23 item 1).

    .venv/bin/python benchmarks/bench_memory.py --quick   # 6-10 min, 2 cores
    .venv/bin/python benchmarks/bench_memory.py           # more crops/epochs

Each scenario runs as a child process while a thread polls ``/proc`` for
it and its descendants (every 50 ms). A process's peak is its ``VmHWM``
(the kernel's own high-water mark of its resident set, so it is exact even
between polls); the tree's peak is given two ways: the sum of every
process's peak (what the goals hold: an upper bound, since the peaks need
not coincide and pages shared between processes count in each) and the
largest sum of ``VmRSS`` seen at one poll. Scenarios:

a. ``python -m finetune.train --pretrained open_nsfw --freeze up-to:pool
   --cache-features`` on 300 photos in 2 classes (150 + 150, from
   ``examples/flowers/photos``), goal < 1.5 GB for the tree;
b. the same through ``finetune.fit`` (no CLI heap setting), same goal;
c. the demo's fine-tuned command (README "The demo": 5 classes, 5 cached
   crops, batch 16);
d. a random-weight AlexNet (``finetune.weights.random_model``, converted to a
   model file) uncached, ``--freeze conv1-conv5``, at batch 32 and 64 on
   300 and 1,200 images (the 1,200 from ``/work/shared/datasets/flowers``
   when present, else the 300 linked four times): goal < 2.5 GB at batch
   32, peak growing with the batch, not with the images;
e. ``python -m finetune.convert`` of a full-size (233 MiB) random AlexNet
   caffemodel: peak RSS / file size, goal <= 1.2.

The figures go to stdout; the goals are held loosely (2x) by
tests/training/test_memory.py.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MiB = 1024 * 1024
PHOTOS = os.path.join(C.ROOT, 'examples', 'flowers', 'photos')
SHARED_FLOWERS = os.path.join(os.path.dirname(C.ROOT), 'shared', 'datasets',
                              'flowers')
FIT_CHILD = r'''
import json, sys
import finetune
if __name__ == '__main__':
    finetune.fit(finetune.TrainConfig(**json.loads(sys.argv[1])))
'''


def read_status(pid):
    """{'name', 'ppid', 'hwm', 'rss'} of /proc/<pid>/status (bytes), or
    None when the process is gone."""
    try:
        with open('/proc/%d/status' % pid) as f:
            text = f.read()
    except OSError:
        return None
    fields = dict(line.split(':', 1) for line in text.splitlines()
                  if ':' in line)
    kib = lambda key: int(fields.get(key, '0 kB').split()[0]) * 1024  # noqa
    return {'name': fields['Name'].strip(), 'ppid': int(fields['PPid']),
            'hwm': kib('VmHWM'), 'rss': kib('VmRSS')}


def read_pss(pid):
    """Proportional set size of ``pid`` in bytes (pages shared with other
    processes counted as a share), or 0 when it is gone."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def read_cmdline(pid):
    """The command line of ``pid`` as one string ('' when gone)."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
    except OSError:
        return ''


class TreePeaks:
    """Peak resident memory of a process and all its descendants.

    A thread polls /proc every ``interval`` seconds until :meth:`stop`.
    ``peaks`` maps pid -> (role, peak bytes): role is 'main' (the root),
    'forkserver', 'resource_tracker', 'worker' (a child of the forkserver:
    a loader worker) or 'child'.
    """

    def __init__(self, root_pid, interval=0.05):
        self.root = root_pid
        self.interval = interval
        self.peaks = {}
        self.roles = {}
        self.simultaneous = 0
        self.pss = 0
        self._polls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _tree(self):
        statuses = {}
        for name in os.listdir('/proc'):
            if name.isdigit():
                status = read_status(int(name))
                if status is not None:
                    statuses[int(name)] = status
        tree, frontier = {}, [self.root]
        while frontier:
            pid = frontier.pop()
            if pid in statuses:
                tree[pid] = statuses[pid]
                frontier.extend(p for p, s in statuses.items()
                                if s['ppid'] == pid)
        return tree

    def _role(self, pid, status):
        if pid == self.root:
            return 'main'
        if self.roles.get(status['ppid']) == 'forkserver':
            return 'worker'
        command = read_cmdline(pid)
        for role in ('forkserver', 'resource_tracker'):
            if role in command:
                return role
        return 'child'

    def _poll(self):
        while not self._done.is_set():
            tree = self._tree()
            for pid, status in tree.items():
                if pid not in self.roles:
                    self.roles[pid] = self._role(pid, status)
                self.peaks[pid] = max(self.peaks.get(pid, 0), status['hwm'])
            self.simultaneous = max(self.simultaneous,
                                    sum(s['rss'] for s in tree.values()))
            if self._polls % 4 == 0:  # smaps_rollup costs more: 200 ms
                self.pss = max(self.pss, sum(map(read_pss, tree)))
            self._polls += 1
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self._thread.join()

    def summary(self):
        """{'main', 'workers' (list), 'others' (list), 'tree_sum',
        'tree_simultaneous', 'tree_pss'}: bytes."""
        by_role = {}
        for pid, peak in sorted(self.peaks.items()):
            by_role.setdefault(self.roles[pid], []).append(peak)
        others = by_role.get('forkserver', []) + \
            by_role.get('resource_tracker', []) + by_role.get('child', [])
        return {'main': sum(by_role.get('main', [0])),
                'workers': by_role.get('worker', []), 'others': others,
                'tree_sum': sum(self.peaks.values()),
                'tree_simultaneous': self.simultaneous,
                'tree_pss': self.pss}


def measure(cmd, env=None, cwd=None, timeout=900):
    """Run ``cmd`` (a list) with :class:`TreePeaks` watching it.

    Returns:
        dict: :meth:`TreePeaks.summary` plus 'seconds', 'returncode' and
        'output' (the last 2,000 characters of stdout and stderr).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=cwd)
    peaks = TreePeaks(proc.pid)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peaks.stop()
    result = peaks.summary()
    result.update(seconds=time.perf_counter() - start,
                  returncode=proc.returncode,
                  output=output.decode('utf-8', 'replace')[-2000:])
    return result


def two_class_folder(root, photos=PHOTOS):
    """``root/a`` and ``root/b`` of symbolic links to the 300 shipped photos,
    150 each (daisy, dandelion and half of rose vs the rest). Returns
    ``root``."""
    files = [os.path.join(photos, c, name) for c in sorted(os.listdir(photos))
             if os.path.isdir(os.path.join(photos, c))
             for name in sorted(os.listdir(os.path.join(photos, c)))]
    half = len(files) // 2
    for i, path in enumerate(files):
        label = 'a' if i < half else 'b'
        os.makedirs(os.path.join(root, label), exist_ok=True)
        os.symlink(path, os.path.join(root, label, '%04d_%s' % (
            i, os.path.basename(path))))
    return root


def flower_folder(root, n_per_class):
    """5 classes of ``n_per_class`` photos (links): the shared 5,080-photo
    set when it is there, else the shipped 60 per class repeated under new
    names. Returns (root, where the photos came from)."""
    source = SHARED_FLOWERS if os.path.isdir(SHARED_FLOWERS) else PHOTOS
    for label in sorted(os.listdir(source)):
        folder = os.path.join(source, label)
        if not os.path.isdir(folder):
            continue
        names = sorted(os.listdir(folder))
        os.makedirs(os.path.join(root, label))
        for i in range(n_per_class):
            os.symlink(os.path.join(folder, names[i % len(names)]),
                       os.path.join(root, label, '%05d_%s' % (
                           i, names[i % len(names)])))
    return root, source


def random_alexnet_npz(folder):
    """A random-weight BVLC AlexNet converted to a model file (the real
    weights cannot be downloaded here). Returns (npz path, caffemodel)."""
    from finetune.weights.random_model import write_random_alexnet
    caffemodel = os.path.join(folder, 'bvlc_alexnet.caffemodel')
    write_random_alexnet(caffemodel, seed=0)
    subprocess.run([sys.executable, '-m', 'finetune.convert', caffemodel,
                    '--out', folder],
                   check=True, stdout=subprocess.DEVNULL, cwd=C.ROOT)
    return os.path.join(folder, 'bvlc_alexnet.npz'), caffemodel


def train_cmd(*args):
    return [sys.executable, '-m', 'finetune.train'] + list(args)


def fit_cmd(**config):
    import json
    return [sys.executable, '-c', FIT_CHILD, json.dumps(config)]


def scenarios(work, quick, only):
    """(name, command, goal in bytes or None, file size or None) of the
    scenarios whose letters are in ``only``; inputs are made as needed."""
    crops, epochs = (2, 1) if quick else (10, 3)
    if set(only) & set('ab'):
        two = two_class_folder(os.path.join(work, 'two_classes'))
    nsfw = dict(pretrained='open_nsfw', freeze='up-to:pool',
                cache_features=True, cache_crops=crops, epochs=epochs)
    if 'a' in only:
        yield ('a. train open_nsfw up-to:pool --cache-features, 300 photos',
               train_cmd('--data', two, '-o', os.path.join(work, 'a'),
                         '--pretrained', 'open_nsfw', '--freeze',
                         'up-to:pool', '--cache-features', '--cache-crops',
                         str(crops), '--epochs', str(epochs)), 1.5e9, None)
    if 'b' in only:
        yield ('b. the same through finetune.fit',
               fit_cmd(data=two, out=os.path.join(work, 'b'), **nsfw),
               1.5e9, None)
    if 'c' in only:
        yield ('c. the demo\'s fine-tuned command (5 classes, batch 16)',
               train_cmd('--data', PHOTOS, '-o', os.path.join(work, 'c'),
                         '--pretrained', 'open_nsfw', '--freeze',
                         'up-to:pool', '--replace', 'fc_nsfw',
                         '--cache-features', '--cache-crops',
                         str(crops) if quick else '5', '--val-split',
                         '0.333', '--epochs', '2' if quick else '20',
                         '--batchsize', '16'), 1.5e9, None)
    if 'd' in only:
        yield from alexnet_scenarios(work, quick)
    if 'e' in only:
        yield convert_scenario(work)


def alexnet_scenarios(work, quick):
    """Scenario d: uncached AlexNet at 2 batch sizes x 2 dataset sizes."""
    npz, _ = random_alexnet_npz(os.path.join(work, 'alexnet'))
    limit = '15' if quick else '40'
    for n in (60, 240):
        data, source = flower_folder(os.path.join(work, 'flowers%d' % n), n)
        origin = 'shared set' if source == SHARED_FLOWERS else \
            'shipped' if n <= 60 else 'shipped, repeated'
        for batch in (32, 64):
            yield ('d. AlexNet uncached conv1-conv5, %d images (%s), batch '
                   '%d' % (5 * n, origin, batch),
                   train_cmd('--data', data, '--pretrained', npz,
                             '--freeze', 'conv1-conv5', '-B', str(batch),
                             '--epochs', '1', '--time-limit', limit,
                             '-o', os.path.join(work, 'd%d_%d' % (n, batch))),
                   2.5e9 if batch == 32 else None, None)


def convert_scenario(work):
    """Scenario e: the full-size conversion (its goal is 1.2x the file)."""
    from finetune.weights.random_model import write_random_alexnet
    caffemodel = os.path.join(work, 'convert', 'bvlc_alexnet.caffemodel')
    write_random_alexnet(caffemodel, seed=1)
    size = os.path.getsize(caffemodel)
    return ('e. convert a 233 MiB AlexNet caffemodel',
            [sys.executable, '-m', 'finetune.convert', caffemodel,
             '--out', os.path.dirname(caffemodel), '--force'], 1.2 * size,
            size)


def mib(n):
    return '%.0f' % (n / MiB)


def report_row(name, result, goal):
    workers = result['workers']
    verdict = '-' if goal is None else (
        'ok' if result['tree_sum'] < goal else 'OVER')
    return [name, mib(result['main']),
            ' '.join(mib(w) for w in workers) or '-',
            mib(sum(result['others'])), mib(result['tree_sum']),
            mib(result['tree_simultaneous']), mib(result['tree_pss']),
            '-' if goal is None else mib(goal), verdict,
            '%.0f' % result['seconds']]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='2 cached crops, 1-2 epochs, 15 s AlexNet runs')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--only', default='abcde',
                   help='letters of the scenarios to run (default abcde)')
    p.add_argument('--keep', help='work in this folder and keep it')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads)
    C.emit(C.environment_report(args.threads, removed))
    work = args.keep or tempfile.mkdtemp(prefix='bench_memory_')
    env = dict(os.environ, FINETUNE_CACHE=os.path.join(work, 'cache'))
    start = time.perf_counter()
    rows, failures = [], []
    for name, cmd, goal, size in scenarios(work, args.quick, args.only):
        result = measure(cmd, env=env, cwd=C.ROOT)
        if result['returncode']:
            failures.append('%s: exit %d\n%s' % (name, result['returncode'],
                                                 result['output']))
        rows.append(report_row(name, result, goal))
        if size:
            rows[-1][0] += ' (main = %.2fx the file)' % (result['main'] / size)
        print('  done: %s (%.0f s)' % (name, result['seconds']),
              file=sys.stderr)
    C.emit(C.table(['scenario', 'main MiB', 'workers MiB', 'others MiB',
                    'tree (sum of peaks)', 'tree (at once)', 'tree PSS',
                    'goal MiB',
                    '', 's'], rows,
                   'peak resident memory (VmHWM) of the process tree'))
    print('others: forkserver and resource tracker; "at once": the largest '
          'sum of VmRSS seen in one poll (50 ms); PSS: the largest sum of '
          'proportional set sizes (shared pages split between their '
          'processes) seen in one poll (200 ms)')
    for failure in failures:
        print('FAILED', failure)
    print('total time %.0f s' % (time.perf_counter() - start))
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
