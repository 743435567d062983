"""One process or many: the few places where data-parallel training differs.

``ranks_for(None)`` is a single process; ``ranks_for('naive')`` (or
``'pure_nccl'`` on GPUs, ...) wraps a ChainerMN communicator, started with
``mpiexec -n N python -m finetune.train --communicator naive ...``. Each
rank trains on its share of the data; gradients are averaged over ranks
every step, so all ranks hold the same weights.
"""
import hashlib

import chainer


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


def ranks_for(communicator):
    """SingleProcess for ``None``, else a ChainerMN communicator by name."""
    if not communicator:
        return SingleProcess()
    import chainermn
    return MultiNode(chainermn.create_communicator(communicator))
