"""Data-parallel training with ChainerMN over MPI, 2 processes on CPU."""
import json
import os
import sys

import pytest

from tests.support.mpi import mpi_available
from tests.support.mpi import mpi_command
from tests.support.mpi import mpi_train_args as train_args
from tests.support.mpi import run_mpi as run

pytestmark = pytest.mark.skipif(
    not mpi_available(), reason='needs OpenMPI (apt-get install openmpi-bin '
    'libopenmpi-dev) and mpi4py')


def final_accuracy(out):
    log = json.load(open(os.path.join(out, 'log')))
    return log[-1]['validation/main/accuracy']


def test_two_ranks_agree_and_match_one_process(digits, tmp_path):
    multi = tmp_path / 'multi'
    result = run(mpi_command(2) + [sys.executable] + train_args(
        digits, multi, 6, 8) + ['--communicator', 'naive'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 ranks hold identical weights' in result.stderr
    # only rank 0 wrote: one log, one set of snapshots, one progress bar
    assert os.path.exists(multi / 'model_final.npz')
    assert result.stdout.count('top-1 accuracy') == 1
    single = tmp_path / 'single'
    alone = run([sys.executable] + train_args(digits, single, 6, 16))
    assert alone.returncode == 0, alone.stderr[-3000:]
    # same effective batch (2 x 8 vs 16): accuracies agree within noise
    # (about 40 validation images: one image is 2.5 points)
    assert abs(final_accuracy(multi) - final_accuracy(single)) <= 0.1
    assert final_accuracy(multi) > 0.7

    resumed = run(mpi_command(2) + [sys.executable] + train_args(
        digits, multi, 8, 8) + ['--communicator', 'naive', '--resume',
                                'auto'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count('resuming from') == 1
    epochs = [entry['epoch'] for entry in
              json.load(open(multi / 'log'))]
    assert epochs == list(range(1, 9))
