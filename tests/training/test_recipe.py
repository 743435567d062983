"""--unfreeze LAYER --warmup-epochs N: head first, then the trunk; resume."""
import numpy as np
import pytest

from finetune.training.extensions import SNAPSHOT_PREFIX
from tests.support.training import params
from tests.support.training import run_train
from tests.support.training import train_args

RECIPE = ('--replace', 'ip2', '--unfreeze', 'conv2', '--warmup-epochs', '1',
          '--trunk-lr-mult', '0.1', '--lr-schedule', 'cosine',
          '--snapshot-interval', '0')


def test_warmup_then_unfreeze_and_resume_after_it_is_bitwise(digits,
                                                             tmp_path):
    data, pretrained = digits
    before = params(pretrained)
    full = tmp_path / 'full'
    run_train(*train_args(data, pretrained, full, '--epochs', '3', *RECIPE))
    done = params(str(full / 'model_final.npz'))
    assert np.array_equal(done['conv1'][0], before['conv1'][0])
    for name in ('conv2', 'ip1'):
        assert not np.array_equal(done[name][0], before[name][0]), name
    snaps = sorted(full.glob(SNAPSHOT_PREFIX + '*'),
                   key=lambda p: int(p.name[len(SNAPSHOT_PREFIX):]))
    with np.load(str(snaps[0])) as warm:  # the end of the warm-up epoch
        for name in ('conv1', 'conv2', 'ip1', 'ip2'):
            for param, b in zip(('W', 'b'), before[name]):
                a = warm['updater/model:main/predictor/net/%s/%s'
                         % (name, param)]
                # only the head trained
                assert np.array_equal(a, b) == (name != 'ip2'), name
    # resume from the snapshot at the end of epoch 2 (after the unfreeze)
    again = tmp_path / 'again'
    again.mkdir()
    run_train(*train_args(data, pretrained, again, '--epochs', '3',
                          '--resume', str(snaps[-2]), *RECIPE))
    resumed = params(str(again / 'model_final.npz'))
    for name in done:
        for a, b in zip(done[name], resumed[name]):
            assert np.array_equal(a, b), name


def train_refusal(capsys, *argv):
    """``python -m finetune.train`` in-process: its exit status and the
    last line of stderr."""
    from finetune.train import main
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return stop.value.code, err.strip().splitlines()[-1]


@pytest.mark.parametrize('extra,flags', [
    (('--warmup-epochs', '2'), ('--warmup-epochs', '--unfreeze')),
    (('--unfreeze', 'conv2', '--freeze', 'conv1'), ('--unfreeze',
                                                    '--freeze')),
    (('--unfreeze', 'conv2', '--freeze', 'conv1-conv2'), ('--unfreeze',
                                                          '--freeze')),
    (('--trunk-lr-mult', '0.5'), ('--trunk-lr-mult', '--unfreeze')),
    (('--unfreeze', 'conv2', '--trunk-lr-mult', '0'), ('--trunk-lr-mult',)),
    (('--unfreeze', 'conv2', '--trunk-lr-mult', '-1'),
     ('--trunk-lr-mult',)),
    (('--unfreeze', 'conv2', '--warmup-epochs', '3', '--epochs', '3'),
     ('--warmup-epochs', '--epochs')),
    (('--unfreeze', 'conv2', '--warmup-epochs', '5', '--epochs', '3'),
     ('--warmup-epochs', '--epochs')),
])
def test_recipe_options_that_do_not_go_together_are_refused_first(
        extra, flags, tmp_path, capsys):
    # neither the data folder nor the caffemodel exists: the options are
    # refused before either is looked at
    out = tmp_path / 'out'
    status, last = train_refusal(
        capsys, '--data', str(tmp_path / 'no-photos'), '--pretrained',
        str(tmp_path / 'missing.caffemodel'), '--out', str(out), *extra)
    assert status == 2
    assert last.startswith('error: ' + flags[0]), last
    assert all(flag in last for flag in flags), last
    assert 'missing' not in last and 'no-photos' not in last, last
    assert not out.exists()


def test_the_same_refusals_from_python():
    from finetune.common.errors import FinetuneError
    from finetune.training.config import TrainConfig
    with pytest.raises(FinetuneError, match='^--warmup-epochs 1: needs '
                       '--unfreeze'):
        TrainConfig(data='photos', warmup_epochs=1)
    with pytest.raises(FinetuneError, match='^--unfreeze conv2: .* drop '
                       '--freeze conv1$'):
        TrainConfig(data='photos', unfreeze='conv2', freeze='conv1')
    # allowed: the default multiplier, --freeze none, a warm-up shorter
    # than the run, or no warm-up (the trunk trains from the start)
    TrainConfig(data='photos', unfreeze='conv2', freeze='none',
                warmup_epochs=2, epochs=3, trunk_lr_mult=0.5)
    TrainConfig(data='photos', unfreeze='conv2', epochs=1)


@pytest.mark.parametrize('extra,words', [
    (('--unfreeze', 'conv9'), ('--unfreeze', 'conv9')),
    (('--unfreeze', 'conv1'), ('--unfreeze', 'conv1')),
    (('--tta',), ('--tta', 'whole images')),
    (('--cache-features',), ('--cache-features', 'frozen leading')),
])
def test_refusals_that_need_the_net_come_before_any_image_is_read(
        extra, words, digits, tmp_path, capsys, monkeypatch):
    # these need the net's layer names or preprocessing, so they come
    # after loading it; the data folder is still not listed
    from finetune.data import folder
    data, pretrained = digits

    def no_listing(*args, **kwargs):
        raise AssertionError('the data folder was read')
    monkeypatch.setattr(folder, 'list_dataset', no_listing)
    monkeypatch.setattr(folder, 'prepare_dataset', no_listing)
    out = tmp_path / 'out'
    status, last = train_refusal(capsys, *train_args(
        data, pretrained, out, '--replace', 'ip2', *extra))
    assert status == 2
    assert all(word in last for word in words), last
    assert not out.exists()
