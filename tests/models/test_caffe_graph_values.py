"""CaffeGraph refuses unusable prototxt values in one line naming the
prototxt, the layer and the field, and sizes every array before making any
(issue 20 item 3)."""
import os
import tracemalloc

import pytest

from finetune.caffe.caffemodel import MAX_PROTOTXT_BYTES
from finetune.caffe.importer import Unset
from finetune.common.errors import CaffeModelError
from finetune.models import CaffeGraph
from finetune.models import caffe_graph
from finetune.models import caffe_params

HEADER = 'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
FC = ('layer { name: "fc" type: "InnerProduct" bottom: "%s" top: "fc" '
      'inner_product_param { num_output: 2 } }\n')


def conv(params, name='c'):
    return ('layer { name: "%s" type: "Convolution" bottom: "data" '
            'top: "%s" convolution_param { %s } }\n' % (name, name, params)
            + FC % name)


def pool(params):
    return ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
            'pooling_param { %s } }\n' % params + FC % 'p')


def same(kind, params, name):
    """A layer of ``kind`` that keeps the shape, then the classifier."""
    return ('layer { name: "%s" type: "%s" bottom: "data" top: "%s" %s }\n'
            % (name, kind, name, params) + FC % name)


def refusal(text, source='t.prototxt'):
    with pytest.raises(CaffeModelError) as e:
        CaffeGraph.from_text(text, source=source, initialW=Unset())
    message = str(e.value)
    assert '\n' not in message
    return message


CONV = 't.prototxt: layer c (Convolution): '
POOL = 't.prototxt: layer p (Pooling): '


@pytest.mark.parametrize('body, message', [
    (conv('num_output: 2 kernel_size: 3 stride: 0'),
     CONV + 'stride must be >= 1, got 0'),
    (conv('num_output: 2 kernel_size: 3 group: 0'),
     CONV + 'group must be >= 1, got 0'),
    (conv('num_output: 2 kernel_size: 0'),
     CONV + 'kernel_size must be >= 1, got 0'),
    (conv('num_output: 2 kernel_size: 3 dilation: 0'),
     CONV + 'dilation must be >= 1, got 0'),
    (conv('num_output: 0 kernel_size: 3'),
     CONV + 'num_output must be >= 1, got 0'),
    (conv('num_output: 2'), CONV + 'kernel_size must be given'),
    (conv('num_output: 2 kernel_h: 3'),
     CONV + 'kernel_h and kernel_w must be given together'),
    (conv('num_output: 2 kernel_h: 3 kernel_w: 0'),
     CONV + 'kernel_w must be >= 1, got 0'),
    (conv('num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3'),
     CONV + 'give kernel_size or kernel_h and kernel_w, not both'),
    (conv('num_output: 2 kernel_size: 3 stride_h: 0 stride_w: 1'),
     CONV + 'stride_h must be >= 1, got 0'),
    (conv('num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3'),
     CONV + 'kernel_size has 3 values; a 2-D layer takes 1 or 2'),
    (conv('num_output: 2 kernel_size: 9'),
     CONV + 'the 9x9 kernel (dilated) does not fit the 8x8 input padded '
     'by 0x0'),
    (conv('num_output: 2 kernel_size: 3 dilation: 4'),
     CONV + 'the 9x9 kernel (dilated) does not fit the 8x8 input padded '
     'by 0x0'),
    (conv('num_output: 2 kernel_size: 1 axis: 2'),
     CONV + 'axis 2: only axis 1 is supported'),
    (pool('kernel_size: 2 stride: 0'), POOL + 'stride must be >= 1, got 0'),
    (pool('kernel_size: 0'), POOL + 'kernel_size must be >= 1, got 0'),
    (pool('stride: 2'), POOL + 'kernel_size must be given'),
    (pool('kernel_size: 2 pad: 2'),
     POOL + 'pad 2x2 must be smaller than the kernel 2x2'),
    (pool('kernel_size: 9 round_mode: FLOOR'),
     POOL + 'the 9x9 kernel does not fit the 8x8 input padded by 0x0'),
    (pool('global_pooling: true kernel_size: 2'),
     POOL + 'global_pooling takes no kernel_size'),
    (pool('global_pooling: true stride: 2'),
     POOL + 'global_pooling needs stride 1 and pad 0'),
    (same('LRN', 'lrn_param { local_size: 0 }', 'n'),
     't.prototxt: layer n (LRN): local_size must be >= 1, got 0'),
    (same('LRN', 'lrn_param { local_size: 4 }', 'n'),
     't.prototxt: layer n (LRN): local_size must be odd, got 4'),
    (same('LRN', 'lrn_param { alpha: nan }', 'n'),
     't.prototxt: layer n (LRN): alpha must be a finite number >= 0, got '
     'nan'),
    (same('LRN', 'lrn_param { k: 0 }', 'n'),
     't.prototxt: layer n (LRN): k must be > 0, got 0.0'),
    (same('Dropout', 'dropout_param { dropout_ratio: 1 }', 'd'),
     't.prototxt: layer d (Dropout): dropout_ratio must be a finite number '
     '>= 0 and < 1, got 1.0'),
    (same('ReLU', 'relu_param { negative_slope: inf }', 'r'),
     't.prototxt: layer r (ReLU): negative_slope must be a finite number, '
     'got inf'),
    (same('BatchNorm', 'batch_norm_param { eps: -1 }', 'bn'),
     't.prototxt: layer bn (BatchNorm): eps must be a finite number >= 0, '
     'got -1.0'),
    (same('Eltwise', 'bottom: "data" eltwise_param { coeff: 1 coeff: nan }',
          'e'),
     't.prototxt: layer e (Eltwise): coeff must be a finite number, got '
     'nan'),
])
def test_unusable_values_name_the_layer_and_field(body, message):
    assert refusal(HEADER + body) == message


@pytest.mark.parametrize('dims, message', [
    ('dim: 1 dim: 0 dim: 8 dim: 8', 'dim 1 of the shape must be >= 1, got 0'),
    ('dim: 0 dim: 3 dim: 8 dim: 8', 'dim 0 of the shape must be >= 1, got 0'),
    ('dim: 1 dim: 3 dim: -8 dim: 8',
     'dim 2 of the shape must be >= 1, got -8'),
])
def test_input_dims_must_be_positive(dims, message):
    text = ('layer { name: "in" type: "Input" top: "data" input_param '
            '{ shape { %s } } }\n' % dims + FC % 'data')
    assert refusal(text) == 't.prototxt: layer in (Input): ' + message


def peak_bytes(build):
    """Peak bytes traced by tracemalloc (NumPy's arrays included) while
    ``build()`` runs (it must raise CaffeModelError); the message."""
    tracemalloc.start()
    try:
        with pytest.raises(CaffeModelError) as e:
            build()
        return tracemalloc.get_traced_memory()[1], str(e.value)
    finally:
        tracemalloc.stop()


def test_huge_num_output_is_refused_with_its_size_before_allocating():
    text = HEADER + ('layer { name: "fc" type: "InnerProduct" bottom: '
                     '"data" top: "fc" inner_product_param { num_output: '
                     '1000000000 } }')
    peak, message = peak_bytes(lambda: CaffeGraph.from_text(
        text, source='t.prototxt'))
    # 10^9 outputs x 192 inputs x 4 bytes
    assert message == ('t.prototxt: layer fc (InnerProduct): num_output '
                       '1000000000: the weights 1000000000x192 would take '
                       '715.3 GiB; the limit is 4.0 GiB per array')
    assert peak < 16 * 2 ** 20


def test_huge_input_is_refused_with_its_size_before_allocating():
    text = ('layer { name: "data" type: "Input" top: "data" input_param { '
            'shape { dim: 1 dim: 1 dim: 100000 dim: 100000 } } }\n'
            + FC % 'data')
    peak, message = peak_bytes(lambda: CaffeGraph.from_text(
        text, source='checkpoint'))
    # 10^10 floats
    assert message == ('checkpoint: layer data (Input): one example of the '
                       'shape 1x100000x100000 would take 37.3 GiB; the limit '
                       'is 4.0 GiB per array')
    assert peak < 16 * 2 ** 20


def test_huge_output_blob_is_refused():
    body = conv('num_output: 400 kernel_size: 1 pad: 2000')
    # 400 x 4008 x 4008 floats of output per example (its patches, 3 x 4008
    # x 4008 floats, fit)
    assert refusal(HEADER + body) == (
        CONV + 'one example of its output c 400x4008x4008 would take 23.9 '
        'GiB; the limit is 4.0 GiB per array')


def test_parameters_in_all_are_bounded(monkeypatch):
    """Two layers that fit one by one but not together: refused before
    either is made (the bound lowered to 1 MiB for the test)."""
    monkeypatch.setattr(caffe_params, 'MAX_PARAMETER_BYTES', 2 ** 20)
    text = HEADER + (
        'layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" '
        'inner_product_param { num_output: 1000 } }\n'
        'layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" '
        'inner_product_param { num_output: 200 } }')
    # a: (1000 x 192 + 1000) x 4 bytes = 753.9 KiB; b: (200 x 1000 + 200) x 4
    # = 782.0 KiB; 1.5 MiB in all
    assert refusal(text) == (
        't.prototxt: the parameters would take 1.5 MiB (the largest, layer '
        'b: 782.0 KiB); the limit is 1.0 MiB')
    monkeypatch.setattr(caffe_params, 'MAX_PARAMETER_BYTES', 2 * 2 ** 20)
    model = CaffeGraph.from_text(text, initialW=Unset())
    assert model.a.W.shape == (1000, 192) and model.b.W.shape == (200, 1000)


def test_links_are_made_without_gradient_arrays():
    model = CaffeGraph.from_text(HEADER + conv('num_output: 2 kernel_size: '
                                               '3'))
    assert all(p.grad is None for p in model.params())


@pytest.mark.parametrize('value', ['-1', '1.5', '4294967296', '"x"'])
def test_values_the_schema_cannot_hold_name_the_layer(value):
    body = conv('num_output: 2 kernel_size: %s' % value)
    message = refusal(HEADER + body)
    assert message.startswith('t.prototxt: cannot read prototxt (layer c): ')


def test_deep_nesting_and_huge_texts_are_refused():
    deep = 'layer { name: "x" ' + 'junk { ' * 5000 + '}' * 5000 + ' }'
    assert refusal(deep) == ('t.prototxt: cannot read prototxt: messages '
                             'nested too deeply')
    huge = HEADER + ' ' * MAX_PROTOTXT_BYTES + conv('num_output: 2 '
                                                    'kernel_size: 1')
    assert 'cannot read prototxt: %d characters; the limit is %d' % (
        len(huge), MAX_PROTOTXT_BYTES) in refusal(huge)


def test_prototxt_files_are_read_with_the_same_bound(tmp_path):
    path = tmp_path / 'big.prototxt'
    path.write_text(HEADER + ' ' * (MAX_PROTOTXT_BYTES + 10))
    with pytest.raises(CaffeModelError) as e:
        CaffeGraph.from_prototxt(str(path))
    assert str(e.value).startswith(str(path) + ': cannot read prototxt: ')
    assert 'the limit is %d' % MAX_PROTOTXT_BYTES in str(e.value)
    assert os.path.getsize(path) > MAX_PROTOTXT_BYTES


def test_names_with_control_characters_are_refused():
    """A newline in a layer name would split every message naming it."""
    text = HEADER + conv('num_output: 2 kernel_size: 1', name='a\\nb')
    assert refusal(text) == ("t.prototxt: layer 'a\\nb': its name, type or "
                             'blob names hold control characters')


@pytest.mark.parametrize('body, message', [
    # 3 channels x 1000 x 1000 window x 1007 x 1007 outputs, 4 bytes each
    (pool('kernel_size: 1000 pad: 999'),
     POOL + 'the 1000x1000 window over 3 channels: its patches '
     '3x1000x1000x1007x1007 would take 11332.9 GiB; the limit is 4.0 GiB '
     'per array'),
    (conv('num_output: 1 kernel_size: 1000 pad: 999'),
     CONV + 'the 1000x1000 window over 3 channels: its patches '
     '3x1000x1000x1007x1007 would take 11332.9 GiB; the limit is 4.0 GiB '
     'per array'),
    (same('LRN', 'lrn_param { local_size: 4001 norm_region: '
                 'WITHIN_CHANNEL }', 'n'),
     't.prototxt: layer n (LRN): the 4001x4001 window over 3 channels: its '
     'patches 3x4001x4001x8x8 would take 11.4 GiB; the limit is 4.0 GiB per '
     'array'),
    (same('LRN', 'lrn_param { local_size: 65537 }', 'n'),
     't.prototxt: layer n (LRN): local_size 65537: the limit is 65535'),
])
def test_windows_whose_forward_would_not_fit_are_refused(body, message):
    """The net builds small, but running it would gather patches beyond the
    bound (a MemoryError, or a loop of 2^15 steps, at the first forward)."""
    assert refusal(HEADER + body) == message


def test_a_net_whose_values_all_live_to_the_end_builds_in_linear_memory(
        monkeypatch):
    """1,500 layers that each read the input, all merged by one Eltwise:
    every blob crosses every later cut (over a million crossings), yet the
    graph keeps per-cut counts only (main kept every crossing: 12 MiB)."""
    n = 1500
    layers = ''.join('layer { name: "r%d" type: "ReLU" bottom: "data" '
                     'top: "r%d" }\n' % (i, i) for i in range(n))
    merge = ('layer { name: "sum" type: "Eltwise" %s top: "sum" }\n'
             % ' '.join('bottom: "r%d"' % i for i in range(n)))
    text = HEADER + layers + merge + FC % 'sum'
    tracemalloc.start()
    try:
        model = CaffeGraph.from_text(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(model.layer_order) == n + 2
    assert model.valid_cuts() == [0, 1]  # before and after fc
    assert len(model.cut_blobs('sum')) == n
    assert peak < 8 * 2 ** 20
    monkeypatch.setattr(caffe_graph, 'MAX_LAYERS', n)
    assert refusal(text) == 't.prototxt: more than %d layers' % n
