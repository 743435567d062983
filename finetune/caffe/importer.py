"""Copy Caffe weights into a Chainer model, all or nothing.

Links are matched to Caffe layers by name. Every check (missing layers,
unsupported weighted layers, weights the model has no place for, shape
mismatches) runs before the first parameter is written, so a failed import
never leaves a half-loaded model.

Convolution and InnerProduct layers load into ``Convolution2D``/``Linear``
links (W, b). Other weighted links name their Caffe type in a
``caffe_type`` attribute and convert blobs themselves:
``caffe_blob_shapes()`` (the shapes expected), ``from_caffe_blobs(blobs)``
(``{attribute: array}``: parameters or persistents) and ``caffe_blobs()``
(the current weights as Caffe blobs); see
:mod:`finetune.models.caffe_graph` (BatchNorm, Scale, PReLU).
"""
import chainer
import chainer.links as L
import numpy as np

from finetune.caffe.caffemodel import read_caffemodel
from finetune.common.errors import CaffeModelError
from finetune.common.fileio import release_pages

WEIGHTED_TYPES = {'Convolution': L.Convolution2D, 'InnerProduct': L.Linear}
#: Every layer type whose caffemodel blobs can be loaded.
LOADABLE_TYPES = ('Convolution', 'InnerProduct', 'BatchNorm', 'Scale',
                  'PReLU')
#: Elements checked at a time for NaN/infinity (4 MiB of float32).
_FINITE_CHUNK = 2 ** 20
#: Most layer names an error message lists before "... and N more" (a
#: crafted caffemodel may have 20,000 layers).
_LISTED = 10


def listed(names):
    """``names`` joined by commas: at most ten, then ``... and N more``."""
    names = list(names)
    more = len(names) - _LISTED
    return ', '.join(names[:_LISTED]) + (' ... and %d more' % more
                                          if more > 0 else '')


class Unset(chainer.Initializer):
    """An initializer that leaves a new parameter's memory as allocated.

    For weights about to be loaded: unlike ``chainer.initializers.Zero()``
    it writes nothing, so the memory of a 233 MB AlexNet is not touched
    (and costs nothing) before its weights arrive. The values are garbage
    until then.
    """

    def __call__(self, array):
        pass


def check_finite(blob, what):
    """Refuse a weight blob holding NaN or infinity, naming ``what`` and
    the first such element's index; a chunk at a time, each released from
    memory after its check when the blob is a memory-mapped view (see
    :func:`finetune.common.fileio.release_pages`).

    Raises:
        CaffeModelError
    """
    flat = blob.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        bad = ~np.isfinite(chunk)
        if bad.any():
            index = start + int(np.flatnonzero(bad)[0])
            raise CaffeModelError('%s holds %s at index %d of %s; a weight '
                                  'must be a finite number'
                                  % (what, flat[index], index, blob.shape))
        release_pages(chunk)


def caffe_type(link):
    """The Caffe layer type ``link`` holds the weights of, or None."""
    for name, cls in WEIGHTED_TYPES.items():
        if isinstance(link, cls):
            return name
    return getattr(link, 'caffe_type', None)


def weighted_links(model):
    """``{name: link}`` of the model's direct children holding Caffe
    weights (Convolution2D, Linear, and links with a ``caffe_type``), in
    the order of ``model.layer_names`` (then by name)."""
    links = {link.name: link for link in model.children()
             if caffe_type(link) is not None}
    order = [n for n in getattr(model, 'layer_names', ()) if n in links]
    order += sorted(set(links) - set(order))
    return {name: links[name] for name in order}


def link_blobs(link):
    """The current weights of ``link`` as Caffe blobs (float32 NumPy, in
    Caffe's shapes and order; InnerProduct untransposed)."""
    if hasattr(link, 'caffe_blobs'):
        return link.caffe_blobs()
    cpu = chainer.backend.CpuDevice()
    return [cpu.send(p.array).astype(np.float32)
            for p in (link.W, link.b) if p is not None]


def _fit(blob, shape, what):
    """``blob`` in ``shape``: legacy 4-D FC shapes lose their leading 1s."""
    if blob.shape == shape:
        return blob
    squeezed = blob.shape
    while len(squeezed) > len(shape) and squeezed[0] == 1:
        squeezed = squeezed[1:]
    if squeezed == shape:
        return blob.reshape(shape)
    raise CaffeModelError('%s: shape mismatch: the model expects %s, the '
                          'caffemodel has %s' % (what, shape, blob.shape))


def _layer_arrays(layer, link, source):
    """``{attribute of link: array}`` from the blobs of ``layer``."""
    what = '%s: layer %s' % (source, layer.name)
    if caffe_type(link) != layer.type:
        raise CaffeModelError('%s: the caffemodel has a %s layer, the model a '
                              '%s' % (what, layer.type, type(link).__name__))
    for i, blob in enumerate(layer.blobs):
        check_finite(blob, '%s: blob %d' % (what, i))
    if hasattr(link, 'caffe_blob_shapes'):
        shapes = link.caffe_blob_shapes()
        if len(layer.blobs) != len(shapes):
            raise CaffeModelError('%s: has %d weight blobs, the model expects '
                                  '%d' % (what, len(layer.blobs),
                                          len(shapes)))
        return link.from_caffe_blobs([
            _fit(blob, tuple(shape), '%s blob %d' % (what, i))
            for i, (blob, shape) in enumerate(zip(layer.blobs, shapes))])
    has_bias = link.b is not None
    if len(layer.blobs) != 1 + has_bias:
        raise CaffeModelError('%s: has %d weight blobs, the model expects %d '
                              '(bias_term %s)' % (what, len(layer.blobs),
                                                  1 + has_bias, has_bias))
    weight = layer.blobs[0]
    transpose = (layer.type == 'InnerProduct' and
                 layer.param.inner_product_param.transpose)
    if transpose:
        weight = _fit(weight, link.W.shape[::-1], what + ' weight').T
    arrays = [_fit(weight, link.W.shape, what + ' weight')]
    if has_bias:
        arrays.append(_fit(layer.blobs[1], link.b.shape, what + ' bias'))
    return dict(zip(('W', 'b'), arrays))


def staged_arrays(model, caffemodel, source=None):
    """Check the weights of ``caffemodel`` against ``model``, writing nothing.

    Args and Raises: as :func:`import_caffemodel`; also CaffeModelError
    for a weight that is NaN or infinite.

    Returns:
        dict: ``{layer name: {attribute of its link: array}}`` in model
        order: float32 arrays in the link's shapes, views of the
        caffemodel's memory where no conversion is needed.
    """
    if isinstance(caffemodel, str):
        source = caffemodel
        caffemodel = read_caffemodel(caffemodel)
    source = source or 'caffemodel'
    weighted = [l for l in caffemodel.layers if l.blobs]
    unsupported = ['%s (%s)' % (l.name, l.type) for l in weighted
                   if l.type not in LOADABLE_TYPES]
    if unsupported:
        raise CaffeModelError('%s: unsupported weighted layer types: %s'
                              % (source, listed(unsupported)))
    links = weighted_links(model)
    by_name = {l.name: l for l in weighted}
    missing = [name for name in links if name not in by_name]
    if missing:
        raise CaffeModelError('%s: layers missing from the caffemodel: %s'
                              % (source, listed(missing)))
    extra = ['%s (%s)' % (name, by_name[name].type) for name in by_name
             if name not in links]
    if extra:
        raise CaffeModelError('%s: the model has no layer for the weights of: '
                              '%s' % (source, listed(extra)))
    return {name: _layer_arrays(by_name[name], link, source)
            for name, link in links.items()}


def import_caffemodel(model, caffemodel, source=None):
    """Load Caffe weights into ``model``'s same-named layers.

    Args:
        model (chainer.Chain): e.g. :class:`finetune.models.AlexNet`; its
            weighted children (:func:`weighted_links`) are matched by
            name. BatchNorm statistics are divided by the stored scale
            factor on the way in, as Caffe's test phase does.
        caffemodel (str or NetDefinition): path to a V1 or V2 caffemodel, or
            one already read with :func:`read_caffemodel`.
        source (str): name used in messages when ``caffemodel`` is a net.

    Returns:
        list of str: the names of the layers loaded, in model order.

    Raises:
        CaffeModelError: a model layer is missing from the file, a weighted
            layer's type is unsupported (all such layers are listed), the
            file has weights the model has no layer for, shapes differ or
            a weight is NaN or infinite. Nothing is written to the model
            in that case.
    """
    staged = staged_arrays(model, caffemodel, source)
    links = weighted_links(model)
    for name, arrays in staged.items():
        for attribute, array in arrays.items():
            target = getattr(links[name], attribute)
            if isinstance(target, chainer.Variable):
                target = target.array
            target[...] = model.xp.asarray(array, dtype=target.dtype)
    return list(staged)


def bind_caffemodel(model, caffemodel, source=None):
    """Make ``model``'s weights the arrays of ``caffemodel`` without a copy.

    Each parameter and persistent becomes a C-contiguous float32 array,
    a read-only view of the memory-mapped caffemodel wherever no
    conversion is needed: for a model about to be written out (see
    :func:`finetune.weights.conversion.convert_caffemodel`), which then
    costs no memory for weights beyond what is being written. Build it
    with :class:`Unset` weights. A NumPy (CPU) model only; checks and
    errors as :func:`import_caffemodel`.

    Returns:
        list of str: the names of the layers bound, in model order.
    """
    staged = staged_arrays(model, caffemodel, source)
    links = weighted_links(model)
    for name, arrays in staged.items():
        for attribute, array in arrays.items():
            array = np.ascontiguousarray(array, dtype=np.float32)
            target = getattr(links[name], attribute)
            if isinstance(target, chainer.Variable):
                target.array = array
            else:
                setattr(links[name], attribute, array)
    return list(staged)
