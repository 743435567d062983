"""One process or many: the few places where data-parallel training differs.

``ranks_for(None)`` is a single process; ``ranks_for('naive')`` (or
``'pure_nccl'`` on GPUs, ...) wraps a ChainerMN communicator, started with
``mpiexec -n N python -m finetune.train --communicator naive ...``. Each
rank trains on its share of the data; gradients are averaged over ranks
every step, so all ranks hold the same weights.
"""
import hashlib
import os

import chainer

from finetune.common.errors import FinetuneError
from finetune.common.gpu import device as gpu_device

#: Environment variables by which MPI launchers (OpenMPI's mpiexec, MPICH
#: and SLURM's srun with PMI/PMIx, MVAPICH) tell a process the job's size.
MPI_SIZE_VARIABLES = ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_SIZE',
                      'MV2_COMM_WORLD_SIZE')


class SingleProcess:
    """The ordinary run: rank 0 of 1."""

    rank = 0
    intra_rank = 0
    size = 1
    is_root = True

    def bcast(self, obj):
        return obj

    def scatter(self, dataset, seed):
        return dataset

    def optimizer(self, optimizer):
        return optimizer

    def evaluator(self, evaluator):
        return evaluator

    def weights_agree(self, model):
        return True

    def gather(self, obj):
        return [obj]

    def resumed(self, optimizer):
        pass

    def any(self, flag):
        return bool(flag)

    def root_result(self, make):
        return make()


class MultiNode:
    """Ranks connected by a ChainerMN communicator (MPI)."""

    def __init__(self, communicator):
        self.comm = communicator
        self.rank = communicator.rank
        self.intra_rank = communicator.intra_rank
        self.size = communicator.size
        self.is_root = communicator.rank == 0

    def bcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        return self.comm.bcast_obj(obj, root=0)

    def scatter(self, dataset, seed):
        """This rank's shuffled, equal-length share of ``dataset``."""
        import chainermn
        return chainermn.scatter_dataset(dataset, self.comm, shuffle=True,
                                         seed=seed)

    def optimizer(self, optimizer):
        """``optimizer`` that averages gradients over ranks."""
        import chainermn
        return chainermn.create_multi_node_optimizer(optimizer, self.comm)

    def evaluator(self, evaluator):
        """``evaluator`` whose results are averaged over ranks."""
        import chainermn
        return chainermn.create_multi_node_evaluator(evaluator, self.comm)

    def weights_agree(self, model):
        """On rank 0: True when every rank holds bitwise the same
        parameters (other ranks get ``None``)."""
        digest = hashlib.sha1()
        for name, param in sorted(model.namedparams()):
            digest.update(name.encode())
            digest.update(chainer.backend.CpuDevice().send(
                param.array).tobytes())
        digests = self.comm.gather_obj(digest.hexdigest(), root=0)
        return None if digests is None else len(set(digests)) == 1


    def resumed(self, optimizer):
        """Tell ChainerMN's multi-node ``optimizer`` that its weights were
        loaded from a snapshot (the same on every rank). Its first
        ``update()`` only broadcasts rank 0's weights and skips the step;
        that is right for the run's first step but made every resumed run
        lose one step (and end with other weights than an uninterrupted
        run)."""
        optimizer.is_changed(optimizer.target)  # records the parameters

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on rank 0 (None
        elsewhere)."""
        return self.comm.gather_obj(obj, root=0)

    def any(self, flag):
        """True on every rank when ``flag`` is true on any rank."""
        return bool(self.comm.allreduce_obj(int(bool(flag))))

    def root_result(self, make):
        """Call ``make()`` on rank 0 (pass None elsewhere); when it raises,
        rank 0 re-raises and the other ranks exit with status 2, so an
        error prints one line, not one per rank."""
        if not self.is_root:
            if self.comm.bcast_obj(None, root=0):  # an error's name
                raise SystemExit(2)
            return None
        try:
            result = make()
        except BaseException as error:
            self.comm.bcast_obj(type(error).__name__, root=0)
            raise
        self.comm.bcast_obj('', root=0)
        return result


def rank_device(device, ranks):
    """Chainer device of this rank: GPU ``device`` + the rank's local index
    (ChainerMN's ``intra_rank``), or the CPU for a negative ``device``."""
    gpu = device + ranks.intra_rank if device >= 0 else -1
    option = '--device %d' % device
    if ranks.size > 1:
        option += ' (rank %d: GPU %d)' % (ranks.rank, gpu)
    return gpu_device(gpu, option)


def mpi_job_size(environ=os.environ):
    """Processes in the MPI job this one was started in (1 outside one)."""
    for name in MPI_SIZE_VARIABLES:
        if environ.get(name, '').isdigit():
            return int(environ[name])
    return 1


def ranks_for_job(communicator='naive'):
    """MultiNode over ``communicator`` when this process is one of several
    started by mpiexec or srun, else SingleProcess (a plain run)."""
    if mpi_job_size() == 1:
        return SingleProcess()
    try:
        import mpi4py.MPI  # noqa: F401 (ChainerMN's transport)
    except ImportError as e:
        raise FinetuneError('started by mpiexec/srun as one of %d '
                            'processes, but mpi4py cannot be imported (%s); '
                            'pip install mpi4py, or run one process'
                            % (mpi_job_size(), e)) from None
    return ranks_for(communicator)


def ranks_for(communicator):
    """SingleProcess for ``None``, else a ChainerMN communicator by name."""
    if not communicator:
        return SingleProcess()
    import chainermn
    return MultiNode(chainermn.create_communicator(communicator))
