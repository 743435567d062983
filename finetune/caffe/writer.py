"""Write caffemodels in Caffe's real binary format.

Used to make test and benchmark files (random weights in BVLC's layout) and
to hand weights back to Caffe. V2 files use ``layer`` and ``BlobShape``; V1
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
    """A V1LayerParameter with the same name, wiring and parameters."""
    v1 = schema.V1LayerParameter(name=layer.name, bottom=layer.bottom,
                                 top=layer.top)
    v1.type = schema.V1LayerParameter.LayerType.Value(_V1_ENUM[layer.type])
    for field in ('convolution_param', 'inner_product_param', 'lrn_param',
                  'pooling_param', 'relu_param', 'dropout_param',
                  'softmax_param'):
        if layer.HasField(field):
            getattr(v1, field).CopyFrom(getattr(layer, field))
    return v1


def caffemodel_bytes(net_param, weights, v1=False):
    """Serialize a deploy definition plus weights as a caffemodel.

    Args:
        net_param: ``caffe.NetParameter`` (V2 ``layer`` list, e.g. a deploy
            prototxt); its Input layer is dropped, as Caffe does when it
            saves a trained net.
        weights (dict): layer name -> list of arrays in Caffe shapes
            (conv ``(out, in/group, kh, kw)``, fc ``(out, in)``, bias
            ``(out,)``).
        v1 (bool): write the legacy V1 format.

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

    Weights are normal with std ``sqrt(2 / fan_in)`` (so activations stay
    in range through deep nets) unless ``scale`` is given; biases normal
    with std 0.1.

    Returns:
        dict: layer name -> [W, b] float32 arrays in Caffe's shapes.
    """
    from finetune.caffe.importer import weighted_links
    weights = {}
    for name, link in weighted_links(model).items():
        shape = link.W.shape
        std = scale or np.sqrt(2.0 / np.prod(shape[1:]))
        arrays = [rng.normal(0, std, shape).astype(np.float32)]
        if link.b is not None:
            arrays.append(rng.normal(0, 0.1, link.b.shape).astype(np.float32))
        weights[name] = arrays
    return weights


def write_caffemodel(path, net_param, weights, v1=False):
    """Write :func:`caffemodel_bytes` to ``path``."""
    with open(path, 'wb') as f:
        f.write(caffemodel_bytes(net_param, weights, v1))
