"""Write caffemodels in Caffe's real binary format.

Used to make random-weight test and benchmark files
(:mod:`finetune.weights.random_model`) and to hand a model's current weights
to OpenCV's Caffe importer (:mod:`finetune.models.opencv_runner`). V2 files use ``layer`` and ``BlobShape``; V1
files use ``layers``, the V1 type enum and 4-D ``num/channels/height/width``
blobs, as the original bvlc_alexnet.caffemodel does.
"""
import numpy as np

from finetune.caffe import schema
from finetune.caffe import wire
from finetune.caffe.caffemodel import V1_TYPE_NAMES
from finetune.caffe.caffemodel import _BLOB_DATA
from finetune.caffe.caffemodel import _LAYER_BLOBS
from finetune.caffe.caffemodel import _LAYER_BLOBS_V1
from finetune.caffe.caffemodel import _NET_LAYER
from finetune.caffe.caffemodel import _NET_LAYERS_V1
from finetune.common.errors import CaffeModelError

_V1_ENUM = {v2: v1 for v1, v2 in V1_TYPE_NAMES.items()}


def _legacy_4d(shape):
    return (1,) * (4 - len(shape)) + tuple(shape)


def _blob_bytes(array, v1):
    """A serialized BlobProto; the floats are packed straight from NumPy."""
    array = np.ascontiguousarray(array, dtype='<f4')
    blob = schema.BlobProto()
    if v1:
        blob.num, blob.channels, blob.height, blob.width = _legacy_4d(
            array.shape)
    else:
        blob.shape.dim.extend(array.shape)
    return blob.SerializeToString() + wire.len_field(_BLOB_DATA,
                                                     array.tobytes())


def _v1_layer(layer):
    """A V1LayerParameter with the same name, wiring and parameters (every
    ``*_param`` message V1 layers have)."""
    if layer.type not in _V1_ENUM:
        raise CaffeModelError('layer %s: %s layers have no V1 type; write '
                              'the V2 format' % (layer.name, layer.type))
    v1 = schema.V1LayerParameter(name=layer.name, bottom=layer.bottom,
                                 top=layer.top)
    v1.type = schema.V1LayerParameter.LayerType.Value(_V1_ENUM[layer.type])
    v1_fields = schema.V1LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in layer.ListFields():
        if field.name.endswith('_param') and field.name in v1_fields:
            getattr(v1, field.name).CopyFrom(value)
    return v1


def caffemodel_bytes(net_param, weights, v1=False):
    """Serialize a deploy definition plus weights as a caffemodel.

    Args:
        net_param: ``caffe.NetParameter`` (V2 ``layer`` list, e.g. a deploy
            prototxt); its Input layer is dropped, as Caffe does when it
            saves a trained net.
        weights (dict): layer name -> list of arrays in Caffe shapes
            (conv ``(out, in/group, kh, kw)``, fc ``(out, in)``, bias
            ``(out,)``; BatchNorm mean and variance sums ``(C,)`` and their
            scale factor ``(1,)``; Scale ``(C,)`` [and bias]; PReLU ``(C,)``
            or ``(1,)``).
        v1 (bool): write the legacy V1 format (V1 has no BatchNorm,
            Scale or PReLU type: such nets raise CaffeModelError).

    Returns:
        bytes
    """
    out = [schema.NetParameter(name=net_param.name).SerializeToString()]
    for layer in net_param.layer:
        if layer.type == 'Input':
            continue
        record = schema.LayerParameter()
        record.CopyFrom(layer)
        del record.param[:]
        if v1:
            record = _v1_layer(record)
        chunks = [record.SerializeToString()]
        for array in weights.get(layer.name, ()):
            chunks.append(wire.len_field(
                _LAYER_BLOBS_V1 if v1 else _LAYER_BLOBS,
                _blob_bytes(array, v1)))
        out.append(wire.len_field(_NET_LAYERS_V1 if v1 else _NET_LAYER,
                                  b''.join(chunks)))
    return b''.join(out)


def random_weights(model, rng, scale=None):
    """Random Caffe-shaped weights for every weighted layer of ``model``.

    Convolution/InnerProduct weights are normal with std ``sqrt(2 /
    fan_in)`` (so activations stay in range through deep nets) unless
    ``scale`` is given; biases normal with std 0.1. BatchNorm: means
    normal (std 0.5), variances uniform in [0.5, 2], stored as Caffe does
    after k training iterations: both times the scale factor
    ``sum(0.999 ** i for i < k)`` (k random in 1..3000), so the division
    on import matters. Scale: uniform in [0.5, 1.5], bias std 0.1. PReLU
    slopes uniform in [0.05, 0.5].

    Returns:
        dict: layer name -> list of float32 arrays in Caffe's shapes.
    """
    from finetune.caffe.importer import caffe_type
    from finetune.caffe.importer import weighted_links
    weights = {}
    for name, link in weighted_links(model).items():
        kind = caffe_type(link)
        if kind not in ('Convolution', 'InnerProduct'):
            weights[name] = _random_blobs(kind, link.caffe_blob_shapes(),
                                          rng)
            continue
        shape = link.W.shape
        std = scale or np.sqrt(2.0 / np.prod(shape[1:]))
        arrays = [rng.normal(0, std, shape).astype(np.float32)]
        if link.b is not None:
            arrays.append(rng.normal(0, 0.1, link.b.shape).astype(np.float32))
        weights[name] = arrays
    return weights


def _random_blobs(kind, shapes, rng):
    if kind == 'BatchNorm':
        mean = rng.normal(0, 0.5, shapes[0])
        var = rng.uniform(0.5, 2.0, shapes[1])
        factor = (1 - 0.999 ** rng.randint(1, 3001)) / (1 - 0.999)
        return [np.float32(factor) * mean.astype(np.float32),
                np.float32(factor) * var.astype(np.float32),
                np.full(1, factor, np.float32)]
    if kind == 'Scale':
        blobs = [rng.uniform(0.5, 1.5, shapes[0])]
        blobs += [rng.normal(0, 0.1, s) for s in shapes[1:]]
        return [b.astype(np.float32) for b in blobs]
    return [rng.uniform(0.05, 0.5, shapes[0]).astype(np.float32)]  # PReLU


def write_caffemodel(path, net_param, weights, v1=False):
    """Write :func:`caffemodel_bytes` to ``path``."""
    with open(path, 'wb') as f:
        f.write(caffemodel_bytes(net_param, weights, v1))
