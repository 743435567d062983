"""``mpiexec -n 2 python -m finetune.predict``: 2 CPU ranks write the same
bytes as one process, and resume the same way after a SIGKILL."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetune.inference.journal import journal_path
from tests.support.predict_jobs import job_inputs
from tests.support.predict_jobs import lenet_npz  # noqa: F401 (fixture)
from tests.support.predict_jobs import photos  # noqa: F401 (fixture)
from tests.support.predict_jobs import predict_command
from tests.support.predict_jobs import reference  # noqa: F401 (fixture)
from tests.support.mpi import mpi_available
from tests.support.mpi import mpi_command
from tests.support.mpi import rank_processes

pytestmark = pytest.mark.skipif(
    not mpi_available(), reason='needs OpenMPI (apt-get install openmpi-bin '
    'libopenmpi-dev) and mpi4py')

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT='1',
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')


def two_ranks(model, photos, out, *extra):
    command = predict_command(model, photos, out, '--features', 'ip1',
                              *extra)
    return mpi_command(2) + command


def test_two_ranks_write_the_bytes_of_one_process(lenet_npz, photos,
                                                  reference, tmp_path):
    csv_bytes, features = reference
    out = tmp_path / 'preds.csv'
    result = subprocess.run(two_ranks(lenet_npz, photos, out),
                            capture_output=True, text=True, env=ENV,
                            cwd=job_inputs(photos)[0], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count('34 images labelled, 1 skipped') == 1
    assert out.read_bytes() == csv_bytes
    np.testing.assert_array_equal(np.load(tmp_path / 'preds.npy'),
                                  features)
    assert sorted(os.listdir(tmp_path)) == ['preds.csv', 'preds.npy']


def test_sigkill_of_one_rank_then_resume_is_byte_identical(
        lenet_npz, photos, reference, tmp_path):
    """Rank 1 killed once rank 0 has written some chunks: mpiexec ends the
    job; the same command (on 2 ranks, then checked also against 1 process)
    keeps the chunks and writes the uninterrupted bytes."""
    csv_bytes, features = reference
    out = tmp_path / 'preds.csv'
    where = job_inputs(photos)[0]
    launcher = subprocess.Popen(two_ranks(lenet_npz, photos, out),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV,
                                cwd=where)
    journal = journal_path(str(out))
    try:
        ranks = rank_processes(launcher, 2)
        deadline = time.time() + 120
        while launcher.poll() is None and time.time() < deadline and not (
                os.path.exists(journal) and
                os.path.getsize(journal) > len(csv_bytes) // 3):
            time.sleep(0.001)
        if launcher.poll() is None:
            os.kill(max(ranks), signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0 and os.path.exists(journal)
    assert not out.exists()
    resumed = subprocess.run(two_ranks(lenet_npz, photos, out),
                             capture_output=True, text=True, env=ENV,
                             cwd=where, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.read_bytes() == csv_bytes
    np.testing.assert_array_equal(np.load(tmp_path / 'preds.npy'),
                                  features)
    assert sorted(os.listdir(tmp_path)) == ['preds.csv', 'preds.npy']


def test_a_refusal_is_one_line_from_rank_0(lenet_npz, photos, tmp_path):
    out = tmp_path / 'preds.csv'
    result = subprocess.run(
        mpi_command(2) + [sys.executable, '-m', 'finetune.predict',
                          '--model', lenet_npz, photos, '-o', str(out),
                          '--features', 'nope'],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines()
              if line.startswith('error: ')]
    assert len(errors) == 1 and "'nope'" in errors[0], result.stderr
    assert os.listdir(tmp_path) == []
