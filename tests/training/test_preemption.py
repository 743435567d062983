"""Preemption: SIGTERM (SLURM's and Kubernetes' notice before a kill) makes
``train`` snapshot at the next iteration and exit with status 75; the same
command with ``--resume auto`` then ends bitwise as an uninterrupted run.
Ctrl-C's message names the command that continues, and it does."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetune.common.cli import PREEMPTED_STATUS
from finetune.training.extensions import latest_snapshot
from tests.support.mpi import mpi_available
from tests.support.mpi import rank_processes
from tests.support.mpi import mpi_command
from tests.support.mpi import run_mpi
from tests.support.mpi import mpi_train_args
from tests.support.training import params
from tests.support.training import train_args


def train_command(data, pretrained, out, *extra):
    """A run of about 30 iterations whose only periodic snapshots are at
    epoch ends, so a SIGTERM mid-epoch is the only way to a mid-epoch
    snapshot."""
    return [sys.executable, '-m', 'finetune.train'] + train_args(
        data, pretrained, out, '--epochs', '4', '--freeze', 'conv1',
        '--replace', 'ip2', '--snapshot-interval', '0', '--loaderjob', '2',
        *extra)


def wait_for_log(out, process, timeout=120):
    """Until ``out/log`` shows an iteration (the log is written every 5)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            with open(os.path.join(out, 'log')) as f:
                if json.load(f):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError('the run ended or logged nothing')


def same_weights(a, b):
    a = params(str(a / 'model_final.npz'))
    b = params(str(b / 'model_final.npz'))
    return a.keys() == b.keys() and all(
        np.array_equal(x, y) for name in a for x, y in zip(a[name], b[name]))


@pytest.fixture(scope='module')
def straight(digits, tmp_path_factory):
    """An uninterrupted run's folder."""
    data, pretrained = digits
    out = tmp_path_factory.mktemp('straight') / 'run'
    subprocess.run(train_command(data, pretrained, out), check=True,
                   capture_output=True)
    return out


def interrupt(command, out, signum):
    """Start ``command``, send ``signum`` to its main process once it has
    logged an iteration: (exit status, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_log(out, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_sigterm_snapshots_exits_75_and_resumes_bitwise(digits, tmp_path,
                                                        straight):
    data, pretrained = digits
    out = tmp_path / 'preempted'
    status, stderr = interrupt(train_command(data, pretrained, out), out,
                               signal.SIGTERM)
    assert status == PREEMPTED_STATUS == 75, stderr[-2000:]
    message = stderr.strip().splitlines()[-1]
    iteration = int(re.search(r'at iteration (\d+) ', message).group(1))
    snapshot = out / ('snapshot_iter_%d' % iteration)
    assert message == (
        'terminated (SIGTERM): snapshot written at iteration %d (%s); '
        'continue with the same command and --resume auto'
        % (iteration, snapshot))
    assert snapshot.exists()
    assert latest_snapshot(str(out)) == str(snapshot)
    assert not (out / 'model_final.npz').exists()
    resumed = subprocess.run(train_command(data, pretrained, out, '--resume',
                                           'auto'),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'resuming from %s' % snapshot in resumed.stderr
    assert same_weights(straight, out)


def test_ctrl_c_names_the_command_that_continues_and_it_does(
        digits, tmp_path, straight):
    """The message used to say "re-run the same command", which is then
    refused (--out holds the run's snapshots)."""
    data, pretrained = digits
    out = tmp_path / 'interrupted'
    status, stderr = interrupt(train_command(data, pretrained, out), out,
                               signal.SIGINT)
    assert status == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        'interrupted; continue with the same command and --resume auto')
    resumed = subprocess.run(train_command(data, pretrained, out, '--resume',
                                           'auto'),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same_weights(straight, out)


@pytest.mark.skipif(not mpi_available(), reason='needs OpenMPI and mpi4py')
def test_sigterm_to_one_rank_stops_every_rank_at_one_iteration(digits,
                                                               tmp_path):
    """SIGTERM reaching rank 1 alone stops both ranks at the same
    iteration (they agree by an allreduce); the 2-rank resumption ends
    bitwise as an uninterrupted 2-rank run."""
    command = mpi_command(2) + [sys.executable]
    extra = ['--communicator', 'naive', '--snapshot-interval', '0']
    straight = tmp_path / 'straight'
    result = run_mpi(command + mpi_train_args(digits, straight, 6, 8)
                     + extra)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / 'preempted'
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT='1',
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
    launcher = subprocess.Popen(
        command + mpi_train_args(digits, out, 6, 8) + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=env)
    try:
        ranks = rank_processes(launcher, 2)
        deadline = time.time() + 120
        while not (out / 'log').exists() and time.time() < deadline:
            time.sleep(0.05)  # the log comes at the first epoch's end
        os.kill(max(ranks), signal.SIGTERM)  # one rank only
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == PREEMPTED_STATUS, stderr[-3000:]
    assert stderr.count('terminated (SIGTERM)') == 1, stderr[-3000:]
    assert not (out / 'model_final.npz').exists()
    resumed = run_mpi(command + mpi_train_args(digits, out, 6, 8) + extra
                      + ['--resume', 'auto'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '2 ranks hold identical weights' in resumed.stderr
    assert same_weights(straight, out)
