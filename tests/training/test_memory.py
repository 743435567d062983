"""Bounded peak memory of training (issue 23 item 1).

The goals (benchmarks/bench_memory.py, figures in benchmarks/README.md):
a cached-features open_nsfw head run under 1.5 GB for the whole process
tree, memory growing with the batch size and not with the number of
images. The tests hold twice the goals, so that the causes measured there
(a 640-crop trunk batch, a memory-mapped cache, unbounded OpenCV batches)
cannot come back unnoticed.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from bench_memory import measure  # noqa: E402

PHOTOS = os.path.join(ROOT, 'examples', 'flowers', 'photos')
GB = 1e9


@pytest.mark.slow
def test_a_cached_features_head_run_stays_under_twice_the_goal(
        open_nsfw, tmp_path):
    """The demo's recipe (open_nsfw up to its pool, 5 cached crops) on the
    300 shipped photos, 1 epoch: the sum of every process's peak RSS
    (main, forkserver, loader workers) under 3 GB (the goal is 1.5 GB).
    Before the fix the cache build ran 64 images x 5 crops per OpenCV
    forward, about 10 MiB each: this test measured 5.18 GB there."""
    result = measure([
        sys.executable, '-m', 'finetune.train', '--data', PHOTOS,
        '--pretrained', 'open_nsfw', '--freeze', 'up-to:pool',
        '--cache-features', '--cache-crops', '5', '--epochs', '1',
        '-o', str(tmp_path / 'out')], cwd=ROOT, timeout=600, env=dict(
            os.environ, FINETUNE_CACHE=str(tmp_path / 'cache')))
    assert result['returncode'] == 0, result['output']
    assert result['workers'], 'no loader worker was seen'
    assert result['tree_sum'] < 2 * 1.5 * GB, result


CACHE_CHILD = textwrap.dedent('''
    import resource, sys
    import numpy as np
    import chainer
    from finetune.data.feature_cache import CachedFeatureDataset
    from finetune.data.feature_cache import build_feature_cache
    from finetune.data.transforms import CaffePreprocess

    class Images(chainer.dataset.DatasetMixin):
        """n random uint8-valued images (3, 64, 64), made on demand."""
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def get_example(self, i):
            rng = np.random.RandomState(i)
            return rng.randint(0, 255, (3, 64, 64)).astype(np.float32), 0

    n, path = int(sys.argv[1]), sys.argv[2]
    prep = CaffePreprocess((64, 64), 56, None)
    # a trunk with large features (16x its input): 200 KiB per crop
    trunk = lambda x: chainer.Variable(np.tile(x, (1, 16, 1, 1)))
    build_feature_cache(path, trunk, Images(n), prep, 'random',
                        chainer.get_device('@numpy'), batch_size=8,
                        loaderjob=0, count=2)
    dataset = CachedFeatureDataset(path, np.zeros(n))
    total = 0.0
    for i in range(n):  # every example read, as in an epoch
        total += float(dataset[i][0][1, 5, 7, 9])
    # VmHWM: ru_maxrss would count the parent's peak (Linux keeps it at
    # exec), and pytest's process may be large
    with open('/proc/self/status') as f:
        print(next(int(line.split()[1]) * 1024 for line in f
                   if line.startswith('VmHWM:')))
''')


def cache_peak(n, tmp_path):
    """Peak RSS (bytes) of a process that builds and reads a cache of
    ``n`` images with 400 KiB of features each."""
    result = subprocess.run(
        [sys.executable, '-c', CACHE_CHILD, str(n),
         str(tmp_path / ('cache%d.npy' % n))], capture_output=True,
        text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_cache_memory_grows_with_the_batch_not_the_images(tmp_path):
    """Building and reading a cache of 600 images vs 300 (400 KiB of
    features each: 117 MiB more on disk): the process's peak grows by less
    than a tenth of that (a memory-mapped cache holds every page it wrote
    and read: the whole difference)."""
    feature_bytes = 2 * 48 * 56 * 56 * 4  # K crops x features per image
    small, large = cache_peak(300, tmp_path), cache_peak(600, tmp_path)
    assert large - small < 0.1 * 300 * feature_bytes, (small, large)


def test_opencv_runs_a_large_batch_in_chunks_with_the_same_result(
        small_nets):
    """A batch over the forward budget runs in chunks (so OpenCV never
    holds the blobs of the whole batch) and gives the one-forward result
    and Chainer's."""
    import chainer
    from finetune.caffe.importer import import_caffemodel
    from finetune.models import CaffeGraph
    from finetune.models.opencv_runner import OpenCVStages
    pytest.importorskip('cv2')
    files = small_nets['resnet_small']
    model = CaffeGraph.from_prototxt(files['prototxt'])
    import_caffemodel(model, files['caffemodel'])
    x = np.random.RandomState(0).normal(
        0, 1, (10,) + model.net_input_shape).astype(np.float32)
    whole = OpenCVStages(model, budget=1 << 40)
    chunked = OpenCVStages(model, budget=1)
    assert chunked.chunk_size(x.shape[1:]) == 1
    assert whole.chunk_size(x.shape[1:]) >= len(x)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        expected = model.forward(x).array
    np.testing.assert_allclose(chunked(x), whole(x), rtol=1e-6, atol=1e-6)
    scale = np.abs(expected).max()
    assert np.abs(chunked(x) - expected).max() < 1e-5 * scale


WORKERS_CHILD = textwrap.dedent('''
    from finetune.data.loader import make_iterator
    from tests.support.memory_probe import PrivateMemory

    if __name__ == '__main__':
        iterator = make_iterator(PrivateMemory(8), 2, 1, repeat=False,
                                 shuffle=False)
        try:
            print([[int(x[0]) for x in batch] for batch in iterator])
        finally:
            iterator.finalize()
''')


@pytest.mark.skipif(not os.path.exists('/proc/self/smaps_rollup'),
                    reason='needs Linux smaps_rollup')
def test_loader_workers_share_chainer_with_the_forkserver(tmp_path):
    """The forkserver imports Chainer and the datasets once
    (loader.WORKER_PRELOAD), so a worker's own private memory is small:
    under 25 MiB (it was 46 MiB when each worker imported Chainer
    itself). In a fresh process: a forkserver some other test started
    without the preload would serve this one."""
    script = tmp_path / 'workers.py'
    script.write_text(WORKERS_CHILD)
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-2000:]
    # Chainer makes the first batch in the main process (to size its
    # shared memory); the others come from the worker
    batches = eval(result.stdout)
    assert len(batches) == 4
    assert max(max(batch) for batch in batches[1:]) < 25 * 1024, batches
