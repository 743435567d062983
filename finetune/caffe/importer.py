"""Copy Caffe weights into a Chainer model, all or nothing.

Links are matched to Caffe layers by name. Every check (missing layers,
unsupported weighted layers, weights the model has no place for, shape
mismatches) runs before the first parameter is written, so a failed import
never leaves a half-loaded model.
"""
import chainer.links as L

from finetune.caffe.caffemodel import read_caffemodel
from finetune.common.errors import CaffeModelError

WEIGHTED_TYPES = {'Convolution': L.Convolution2D, 'InnerProduct': L.Linear}


def weighted_links(model):
    """``{name: link}`` of the model's direct Convolution2D/Linear children."""
    return {link.name: link for link in model.children()
            if isinstance(link, tuple(WEIGHTED_TYPES.values()))}


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
    """Return the (W[, b]) arrays of ``layer`` shaped for ``link``."""
    what = '%s: layer %s' % (source, layer.name)
    expected = WEIGHTED_TYPES[layer.type]
    if not isinstance(link, expected):
        raise CaffeModelError('%s: the caffemodel has a %s layer, the model a '
                              '%s' % (what, layer.type, type(link).__name__))
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
    return arrays


def import_caffemodel(model, caffemodel, source=None):
    """Load Caffe weights into ``model``'s same-named layers.

    Args:
        model (chainer.Chain): e.g. :class:`finetune.models.AlexNet`; its
            Convolution2D/Linear children are matched by name.
        caffemodel (str or CaffeNet): path to a V1 or V2 caffemodel, or
            one already read with :func:`read_caffemodel`.
        source (str): name used in messages when ``caffemodel`` is a net.

    Returns:
        list of str: the names of the layers loaded, in model order.

    Raises:
        CaffeModelError: a model layer is missing from the file, a weighted
            layer's type is unsupported (all such layers are listed), the
            file has weights the model has no layer for, or shapes differ.
            Nothing is written to the model in that case.
    """
    if isinstance(caffemodel, str):
        source = caffemodel
        caffemodel = read_caffemodel(caffemodel)
    source = source or 'caffemodel'
    weighted = [l for l in caffemodel.layers if l.blobs]
    unsupported = ['%s (%s)' % (l.name, l.type) for l in weighted
                   if l.type not in WEIGHTED_TYPES]
    if unsupported:
        raise CaffeModelError('%s: unsupported weighted layer types: %s'
                              % (source, ', '.join(unsupported)))
    links = weighted_links(model)
    by_name = {l.name: l for l in weighted}
    missing = [name for name in links if name not in by_name]
    if missing:
        raise CaffeModelError('%s: layers missing from the caffemodel: %s'
                              % (source, ', '.join(missing)))
    extra = [name for name in by_name if name not in links]
    if extra:
        raise CaffeModelError('%s: the model has no layer for the weights of: '
                              '%s' % (source, ', '.join(extra)))
    staged = {name: _layer_arrays(by_name[name], link, source)
              for name, link in links.items()}
    for name, arrays in staged.items():
        for param, array in zip((links[name].W, links[name].b), arrays):
            param.array[...] = model.xp.asarray(array, dtype=param.dtype)
    return list(staged)
