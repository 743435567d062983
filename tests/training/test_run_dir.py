"""finetune.training.run_dir: a run's --out holds only its own snapshots,
and one run at a time (real LeNet, real digits)."""
import os
import shutil


from finetune.training.run_dir import exclusive_run
from tests.support.processes import folder_state
from tests.support.processes import one_error_line
from tests.support.processes import run_module


def train(data, pretrained, out, *extra):
    return run_module('finetune.train', '--data', data, '--pretrained',
                      pretrained, '-o', str(out), '--replace', 'ip2',
                      '--freeze', 'conv1-conv2', '-E', '1', '-B', '16',
                      '-j', '0', '--log-interval', '0', *extra)


def test_reused_out_with_other_data_is_refused(digits, tmp_path):
    data, pretrained = digits
    other = tmp_path / 'other'
    shutil.copytree(data, other)
    shutil.rmtree(other / '9')
    out = tmp_path / 'out'
    assert train(data, pretrained, out).returncode == 0
    before = folder_state(out)
    line = one_error_line(train(str(other), pretrained, out))
    assert 'holds snapshots of an earlier run' in line
    line = one_error_line(train(str(other), pretrained, out, '-r', 'auto'))
    assert line.startswith('error: --resume: the snapshots are of another '
                           'run (--data differ')
    assert folder_state(out) == before  # the lock file not even touched
    before = open(out / 'train.txt').read()
    assert train(str(other), pretrained, out, '--overwrite').returncode == 0
    assert open(out / 'train.txt').read() != before
    assert '9' not in open(out / 'labels.txt').read().split()


def test_a_second_run_on_the_same_out_stops(digits, tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    with exclusive_run(str(out)):
        line = one_error_line(train(data, pretrained, out))
    assert 'a training run is already using this folder (pid %d)' \
        % os.getpid() in line
    assert not (out / 'train.txt').exists()


def test_resume_from_a_model_file_or_text_is_one_line(digits, tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    line = one_error_line(train(data, pretrained, out, '-r', pretrained))
    assert 'not a trainer snapshot (a model file' in line
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    line = one_error_line(train(data, pretrained, out, '-r', str(text)))
    assert 'not a readable snapshot' in line
    assert not out.exists()  # refused before --out is made


def test_an_unusable_data_folder_is_refused_before_out_is_made(digits,
                                                               tmp_path):
    data, pretrained = digits
    (tmp_path / 'empty').mkdir()
    shutil.copytree(os.path.join(data, '3'), tmp_path / 'one' / '3')
    out = tmp_path / 'out'
    for folder, message in [(tmp_path / 'nope', 'nope: not a folder'),
                            (tmp_path / 'empty', 'found 0 class folder(s)'),
                            (tmp_path / 'one', 'found 1 class folder(s)')]:
        assert message in one_error_line(train(str(folder), pretrained, out))
        assert not out.exists()
        lr_find = train(str(folder), pretrained, out, '--lr-find')
        assert message in one_error_line(lr_find)
        assert not out.exists()


def test_a_run_without_validation_images_resumes(digits, tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    first = train(data, pretrained, out, '--val-split', '0')
    assert first.returncode == 0, first.stderr[-2000:]
    assert 'no validation images' in first.stderr
    assert open(out / 'val.txt').read() == ''
    again = train(data, pretrained, out, '--val-split', '0', '-E', '2',
                  '-r', 'auto')
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'resuming from' in again.stderr
    assert (out / 'model_final.npz').exists()
    assert not (out / 'model_best.npz').exists()


def test_lr_find_keeps_another_runs_lists(digits, tmp_path):
    data, pretrained = digits
    other = tmp_path / 'other'
    shutil.copytree(data, other)
    shutil.rmtree(other / '9')
    out = tmp_path / 'out'
    assert train(str(other), pretrained, out).returncode == 0
    before = folder_state(out)
    line = one_error_line(train(data, pretrained, out, '--lr-find'))
    assert 'holds snapshots of an earlier run' in line
    assert folder_state(out) == before
    found = train(str(other), pretrained, out, '--lr-find', '-r', 'auto')
    assert found.returncode == 0, found.stderr[-2000:]
    assert (out / 'lr_find.png').exists()
    lists = ('train.txt', 'val.txt', 'labels.txt')
    assert [before[str(out / name)][2] for name in lists] == [
        open(out / name, 'rb').read() for name in lists]
    resumed = train(str(other), pretrained, out, '-E', '2', '-r', 'auto')
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_run_identity_written_before_the_image_list_rename_resumes(
        tmp_path):
    """run.json files of earlier versions call --image-list 'label_file':
    the same run still resumes, another image list is still refused."""
    import json
    import pytest
    from finetune.common.errors import FinetuneError
    from finetune.training.config import TrainConfig
    from finetune.training.run_dir import check_run_dir
    from finetune.training.run_dir import run_identity
    out = tmp_path / 'out'
    out.mkdir()
    config = TrainConfig(data=str(tmp_path), out=str(out), resume='auto',
                         image_list=str(tmp_path / 'list.txt'))
    old = run_identity(config)
    old['label_file'] = old.pop('image_list')
    (out / 'run.json').write_text(json.dumps(old))
    check_run_dir(config.output, run_identity(config))  # the same run
    other = TrainConfig(data=str(tmp_path), out=str(out), resume='auto',
                        image_list=str(tmp_path / 'other.txt'))
    with pytest.raises(FinetuneError, match='--image-list was'):
        check_run_dir(other.output, run_identity(other))
