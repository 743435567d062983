"""Launching ChainerMN runs with OpenMPI's mpiexec on CPU."""
import os
import shutil
import subprocess
import sys
import time

MPIEXEC = shutil.which('mpiexec')


def mpi_available():
    """Whether mpiexec and mpi4py are both installed."""
    if not MPIEXEC:
        return False
    probe = subprocess.run([sys.executable, '-c', 'import mpi4py.MPI'],
                           capture_output=True)
    return probe.returncode == 0


def mpi_command(n):
    """The mpiexec prefix of an ``n``-rank run."""
    command = [MPIEXEC, '-n', str(n), '--oversubscribe']
    if os.geteuid() == 0:
        command.append('--allow-run-as-root')
    return command


def mpi_train_args(digits, out, epochs, batchsize):
    """``python`` arguments of a short LeNet run on ``digits``."""
    data, pretrained = digits
    return ['-m', 'finetune.train', '--data', data, '--pretrained',
            pretrained, '--out', str(out), '--epochs', str(epochs),
            '--batchsize', str(batchsize), '--val-split', '0.3',
            '--freeze', 'conv1-conv2', '--replace', 'ip1-ip2',
            '--loaderjob', '0', '--log-interval', '0',
            '--snapshot-interval', '5']


def run_mpi(command):
    """Run ``command`` (an mpiexec line) to its end: CompletedProcess."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT='1',
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
    return subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=600)


def rank_processes(launcher, n, timeout=60):
    """The pids of the ``n`` Python ranks ``launcher`` (mpiexec) started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        children = []
        for task in os.listdir('/proc/%d/task' % launcher.pid):
            with open('/proc/%d/task/%s/children'
                      % (launcher.pid, task)) as f:
                children += [int(pid) for pid in f.read().split()]
        if len(children) == n:
            return children
        time.sleep(0.05)
    raise AssertionError('mpiexec did not start %d ranks' % n)
