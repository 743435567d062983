"""Pretrained weights: the registry, fetch, conversion and the one cache.

The stage every pretrained network comes through::

    registry.py      what finetune knows about each named model
    download.py      fetch a model's caffemodel, SHA-1 checked, resumably
    conversion.py    caffemodel -> model file (.npz), once, across processes
    cache.py         the per-user cache of downloaded and converted weights
    load.py          a name or path -> a ready network (``pretrained()``)
    random_model.py  random-weight caffemodels of a real net's layout

This package is itself callable: ``finetune.pretrained('open_nsfw')`` is
:func:`finetune.pretrained.load.pretrained` (a module cannot share its
name with a function otherwise: ``finetune.pretrained`` is this package as
soon as any of its modules is imported). Importing it imports neither
chainer nor numpy.
"""
import sys
import types


class _CallableStage(types.ModuleType):
    """This package's module type: calling it loads a pretrained net."""

    def __call__(self, name_or_path, prototxt=None, pretrained_dir=None):
        """See :func:`finetune.pretrained.load.pretrained`."""
        from finetune.pretrained.load import pretrained
        return pretrained(name_or_path, prototxt, pretrained_dir)


sys.modules[__name__].__class__ = _CallableStage
