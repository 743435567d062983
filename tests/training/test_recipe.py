"""--unfreeze LAYER --warmup-epochs N: head first, then the trunk; resume."""
import numpy as np

from finetune.training.extensions import SNAPSHOT_PREFIX
from tests.training.test_fit import params
from tests.training.test_fit import run_train
from tests.training.test_fit import train_args

RECIPE = ('--replace', 'ip2', '--unfreeze', 'conv2', '--warmup-epochs', '1',
          '--trunk-lr-mult', '0.1', '--lr-schedule', 'cosine',
          '--snapshot-interval', '0')


def test_warmup_then_unfreeze_and_resume_after_it_is_bitwise(digits,
                                                             tmp_path):
    data, pretrained = digits
    before = params(pretrained)
    one = tmp_path / 'one'
    run_train(*train_args(data, pretrained, one, '--epochs', '1', *RECIPE))
    warm = params(str(one / 'model_final.npz'))
    for name in ('conv1', 'conv2', 'ip1'):  # only the head trained
        for b, a in zip(before[name], warm[name]):
            assert np.array_equal(a, b), name
    full = tmp_path / 'full'
    run_train(*train_args(data, pretrained, full, '--epochs', '3', *RECIPE))
    done = params(str(full / 'model_final.npz'))
    assert np.array_equal(done['conv1'][0], before['conv1'][0])
    for name in ('conv2', 'ip1'):
        assert not np.array_equal(done[name][0], before[name][0]), name
    # resume from the snapshot at the end of epoch 2 (after the unfreeze)
    snaps = sorted(full.glob(SNAPSHOT_PREFIX + '*'),
                   key=lambda p: int(p.name[len(SNAPSHOT_PREFIX):]))
    again = tmp_path / 'again'
    again.mkdir()
    run_train(*train_args(data, pretrained, again, '--epochs', '3',
                          '--resume', str(snaps[-2]), *RECIPE))
    resumed = params(str(again / 'model_final.npz'))
    for name in done:
        for a, b in zip(done[name], resumed[name]):
            assert np.array_equal(a, b), name
