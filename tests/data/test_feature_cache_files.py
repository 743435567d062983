"""The feature cache's files (issue 20 item 12, issue 23 item 1): a killed
cache build leaves no temporaries behind the next run, and the cache is
read with bounded memory (one image's crops at a time, never mapped
whole)."""
import os
import tempfile

import numpy as np
import pytest

from finetune.common.errors import FinetuneError
from finetune.data.feature_cache import CachedFeatureDataset
from finetune.models.model_file import load_model
from finetune.training.config import build_parser
from finetune.training.config import config_from_args
from finetune.training.fit import fit


def lenet_args(data, pretrained, out):
    """A LeNet head run on cached conv1-conv2 features, in-process."""
    return ['--data', data, '--pretrained', pretrained, '--out', str(out),
            '--batchsize', '16', '--val-split', '0.3', '--lr', '0.01',
            '--loaderjob', '0', '--epochs', '1', '--freeze', 'conv1-conv2',
            '--replace', 'ip1-ip2', '--cache-features', '--log-interval',
            '0']


def run(argv):
    return fit(config_from_args(build_parser().parse_args(argv)))


def stale_temporary(cache_dir, final_name, size=1 << 20):
    """A temporary named as fileio.atomic_write names the one of
    ``final_name`` (``.<name>.<random>.tmp.npy``), as a killed build leaves
    it."""
    fd, path = tempfile.mkstemp(prefix='.' + final_name + '.',
                                suffix='.tmp.npy', dir=str(cache_dir))
    os.write(fd, b'\x93NUMPY' + b'\0' * (size - 6))
    os.close(fd)
    return path


def weights(path):
    model, _, _ = load_model(path)
    return {name: [p.array.copy() for p in model[name].params()]
            for name in model.layer_names}


def test_a_rerun_removes_the_temporaries_a_killed_build_left(digits,
                                                             tmp_path):
    data, pretrained = digits
    clean = tmp_path / 'clean'
    run(lenet_args(data, pretrained, clean))
    out = tmp_path / 'killed'
    cache_dir = out / 'feature_cache'
    cache_dir.mkdir(parents=True)
    # what SIGKILL during each split's build leaves (names as the real
    # cache files would have, and one of an older key), plus files that
    # are not the cache's and must stay
    left = [stale_temporary(cache_dir, name) for name in sorted(
        os.listdir(clean / 'feature_cache')) + ['train-0123456789abcdef0123'
                                               '.npy']]
    mine = [cache_dir / 'notes.txt', out / ('.model_final.npz.x.tmp.npz')]
    for path in mine:
        path.write_text('not a cache temporary')
    run(lenet_args(data, pretrained, out))
    assert not [p for p in left if os.path.exists(p)]
    assert all(path.exists() for path in mine)
    assert sorted(os.listdir(cache_dir)) == sorted(
        os.listdir(clean / 'feature_cache') + ['notes.txt'])
    for name in os.listdir(clean / 'feature_cache'):
        np.testing.assert_array_equal(
            np.load(str(clean / 'feature_cache' / name)),
            np.load(str(cache_dir / name)))
    ours, theirs = weights(str(out / 'model_final.npz')), \
        weights(str(clean / 'model_final.npz'))
    for name in ours:
        for a, b in zip(ours[name], theirs[name]):
            np.testing.assert_array_equal(a, b)


def test_a_rerun_that_reuses_the_cache_also_removes_them(digits, tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    run(lenet_args(data, pretrained, out))
    cache_dir = out / 'feature_cache'
    left = [stale_temporary(cache_dir, name)
            for name in os.listdir(cache_dir)]
    run(lenet_args(data, pretrained, out) + ['--overwrite'])
    assert not [p for p in left if os.path.exists(p)]


def write_cache(path, features):
    np.save(str(path), np.asarray(features, np.float32))
    return str(path)


def test_cached_features_are_read_per_image_not_mapped(tmp_path):
    """Each example is read from the file (its K crops), so a process
    holds one batch, not the pages of the whole cache; values as saved."""
    features = np.random.RandomState(0).rand(7, 3, 5, 2).astype(np.float32)
    dataset = CachedFeatureDataset(write_cache(tmp_path / 'c.npy',
                                               features), np.arange(7))
    for i in (0, 3, 6):
        x, label = dataset[i]
        np.testing.assert_array_equal(x, features[i])
        assert label == i and x.dtype == np.float32
    assert not any(str(tmp_path / 'c.npy') in line
                   for line in open('/proc/self/maps'))


@pytest.mark.parametrize('damage', ['truncated', 'longer', 'float64',
                                    'object', 'not npy', 'fortran',
                                    'fewer rows', 'huge header shape'])
def test_a_damaged_cache_file_is_one_line_error(tmp_path, damage):
    """The cache is in --out, where anything may have written: a file that
    does not hold float32 rows of the expected count and size is refused
    naming it, before anything is allocated from its header."""
    path = tmp_path / 'c.npy'
    good = np.ones((4, 2, 3), np.float32)
    if damage == 'truncated':
        write_cache(path, good)
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) - 4)
    elif damage == 'longer':
        write_cache(path, good)
        with open(path, 'ab') as f:
            f.write(b'\0' * 4)
    elif damage == 'float64':
        np.save(str(path), good.astype(np.float64))
    elif damage == 'object':
        np.save(str(path), np.array([None] * 4, dtype=object),
                allow_pickle=True)
    elif damage == 'not npy':
        path.write_bytes(b'PK\x03\x04' + b'\0' * 100)
    elif damage == 'fortran':
        np.save(str(path), np.asfortranarray(good))
    elif damage == 'fewer rows':
        write_cache(path, good[:3])
    elif damage == 'huge header shape':
        header = {'descr': '<f4', 'fortran_order': False,
                  'shape': (4, 2 ** 40, 3)}
        with open(path, 'wb') as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b'\0' * 96)
    with pytest.raises(FinetuneError) as error:
        CachedFeatureDataset(str(path), np.arange(4))[0]
    assert str(path) in str(error.value)
    assert '\n' not in str(error.value)


def test_a_damaged_cache_is_built_again(digits, tmp_path, capsys):
    """A cache file cut short (a full disk, a user's editor) is not reused:
    the next run builds it again and trains as on a fresh cache."""
    data, pretrained = digits
    out = tmp_path / 'out'
    run(lenet_args(data, pretrained, out))
    cache_dir = out / 'feature_cache'
    name = [n for n in os.listdir(cache_dir) if n.startswith('train-')][0]
    good = np.load(str(cache_dir / name))
    with open(cache_dir / name, 'r+b') as f:
        f.truncate(os.path.getsize(cache_dir / name) // 2)
    capsys.readouterr()
    run(lenet_args(data, pretrained, out) + ['--overwrite'])
    assert 'train features: cached in' in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(str(cache_dir / name)), good)
