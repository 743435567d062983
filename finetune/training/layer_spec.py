"""Layer specs: how ``--freeze``, ``--replace`` and ``--unfreeze`` name
layers (no chainer import: ``--help`` shows :data:`LAYER_SPEC_FORMS`).

A spec selects layers of ``model.layer_names`` (the weighted layers in
forward order). The ends of a range may be any layer of the
:class:`~finetune.models.CaffeGraph` in prototxt order
(``conv_1-eltwise_stage2_block3`` selects the weighted layers between
them); ``up-to:LAYER`` selects every weighted layer before LAYER, and LAYER
itself when it has weights.
"""
from finetune.common.errors import FinetuneError

#: (example on BVLC AlexNet, what it selects): every form the parser takes
LAYER_SPEC_FORMS = (
    ('conv1-conv5', 'a range, both ends included'),
    ('conv1,conv2', 'a list'),
    ('conv1,conv2-conv4', 'names and ranges together'),
    ('up-to:pool5', 'every layer up to a layer of the prototxt'),
    ('all', 'every weighted layer: --replace all trains from scratch'),
    ('none', 'no layer'),
)


def layer_spec_help():
    """The forms of :data:`LAYER_SPEC_FORMS` as one ``--help`` phrase."""
    return '; '.join("'%s' (%s)" % form for form in LAYER_SPEC_FORMS)


def parse_layer_spec(spec, model):
    """Names selected by ``spec``, in network order.

    Args:
        spec (str): see the module docstring.
        model: the network (its ``layer_names`` and ``layer_order``), or
            just a sequence of layer names.

    Raises:
        FinetuneError: an unknown layer name or a backwards range.
    """
    names = list(getattr(model, 'layer_names', model))
    order = list(getattr(model, 'layer_order', names))
    spec = (spec or 'none').strip()
    if spec == 'none':
        return []
    if spec == 'all':
        return names
    chosen = set()
    for part in spec.split(','):
        part = part.strip()
        if part.startswith('up-to:'):
            ends = [order[0], part[len('up-to:'):].strip()]
        else:
            ends = [p.strip() for p in part.split('-')]
        for end in ends:
            if end not in order:
                raise FinetuneError('unknown layer %r in %r; layers are: %s'
                                    % (end, spec, ', '.join(order)))
        first, last = order.index(ends[0]), order.index(ends[-1])
        if len(ends) > 2 or last < first:
            raise FinetuneError('bad layer range %r (layers are: %s)'
                                % (part, ', '.join(order)))
        chosen.update(n for n in names
                      if first <= order.index(n) <= last)
    return [n for n in names if n in chosen]
