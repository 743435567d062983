"""CaffeGraph's model-side surgery: cuts, feeds, heads, BatchNorm in
training, gradients, errors and checkpoints."""
import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import gradient_check

from tests.support.paths import data_path
from finetune.caffe.importer import import_caffemodel
from finetune.weights.random_model import write_random_caffemodel
from finetune.common.errors import CaffeModelError
from finetune.data.transforms import CaffePreprocess
from finetune.models import CaffeGraph
from finetune.models.model_file import load_model
from finetune.models.model_file import save_model
from finetune.training.solver import CaffeSGD
from finetune.training.solver import set_caffe_lr_policy
from finetune.training.surgery import FineTuneNet
from finetune.training.surgery import freeze_layers

RESNET = data_path('caffe', 'resnet_small.prototxt')


def loaded(files):
    model = CaffeGraph.from_prototxt(files['prototxt'])
    import_caffemodel(model, files['caffemodel'])
    return model


def run(model, x, **cut):
    """Test-mode ``model.forward(x, **cut)`` as an array."""
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model.forward(x, **cut).array


def images(model, n=2, seed=0):
    return np.random.RandomState(seed).normal(
        0, 1, (n,) + model.net_input_shape).astype(np.float32)


def test_layer_names_are_the_weighted_layers_in_prototxt_order():
    model = CaffeGraph.from_prototxt(RESNET)
    text = open(RESNET).read()
    weighted = [line.split('"')[1] for line in text.splitlines()
                if line.startswith('layer {') and any(
                    '"%s"' % t in line for t in
                    ('Convolution', 'BatchNorm', 'Scale', 'InnerProduct'))]
    assert list(model.layer_names) == weighted
    assert len(model.layer_names) == 25
    assert all(model[name] is not None for name in model.layer_names)
    assert model.layer_order[:6] == ('conv1', 'bn_conv1', 'scale_conv1',
                                     'conv1_relu', 'pool1', 'res2a_branch1')
    assert 'prob' not in model.layer_order  # the final Softmax
    assert model.classifier_name == 'fc5' and model.n_classes == 5


def test_valid_cuts_are_where_one_blob_crosses():
    model = CaffeGraph.from_prototxt(RESNET)
    names = list(model.layer_names) + ['END']
    # inside a residual block two blobs (shortcut and branch) are alive
    assert [names[k] for k in model.valid_cuts()] == [
        'conv1', 'bn_conv1', 'scale_conv1', 'res2a_branch1',
        'res2b_branch2a', 'fc5', 'END']
    assert model.cut_blobs('res2a_branch1') == ['pool1']
    assert model.cut_blobs('res2b_branch2a') == ['res2a']
    assert model.cut_blobs('res2a_branch2b') == ['res2a_branch1',
                                                 'res2a_branch2a']
    with pytest.raises(CaffeModelError) as e:
        model.forward(images(model), stop='res2a_branch2b')
    message = str(e.value)
    assert "'res2a_branch2b'" in message and '2 blobs' in message
    assert 'res2a_branch1, res2a_branch2a' in message
    assert '\n' not in message
    k = model.layer_names.index('res2a_branch2b')
    with pytest.raises(CaffeModelError, match='res2a_branch1'):
        model.forward(images(model), start=k)
    with pytest.raises(CaffeModelError, match="no layer 'nope'"):
        model.forward(images(model), stop='nope')


def test_cut_at_a_parameter_free_layer_name(small_nets):
    """Cuts may name any layer: before res2b_relu only res2b crosses."""
    model = loaded(small_nets['resnet_small'])
    x = images(model)
    h = run(model, x, stop='res2b_relu')
    assert h.shape == (2, 16, 4, 4)
    assert h.min() < 0  # not yet through the ReLU
    assert np.allclose(run(model, h, start='res2b_relu'), run(model, x),
                       atol=1e-6)


@pytest.mark.parametrize('name', ['resnet_small', 'inception_small',
                                  'squeeze_small', 'mixed_small', 'v1_dag'])
def test_forward_split_at_every_valid_cut_equals_the_whole(name,
                                                           small_nets):
    model = loaded(small_nets[name])
    x = images(model, seed=3)
    whole = run(model, x)
    assert whole.shape == (2, model.n_classes)
    for k in model.valid_cuts():
        h = run(model, x, stop=k)
        assert h.shape == (2,) + tuple(model.cut_shape(k))
        np.testing.assert_allclose(run(model, h, start=k), whole,
                                   rtol=0, atol=1e-5 * np.abs(whole).max())


def test_feeds_map(small_nets):
    model = CaffeGraph.from_prototxt(RESNET)
    feeds = model.feeds()
    assert set(feeds) == set(model.layer_order)
    assert feeds['conv1'] == ()
    assert feeds['bn_conv1'] == ('conv1',)  # in place: the version before
    assert feeds['res2a'] == ('scale2a_branch1', 'scale2a_branch2c')
    assert feeds['res2b'] == ('res2a_relu', 'scale2b_branch2c')
    weighted = model.feeds(weighted=True)
    assert set(weighted) == set(model.layer_names)
    assert weighted['res2a_branch1'] == ('scale_conv1',)
    assert weighted['res2b_branch2a'] == ('scale2a_branch1',
                                          'scale2a_branch2c')
    assert weighted['fc5'] == ('scale2a_branch1', 'scale2a_branch2c',
                               'scale2b_branch2c')
    inception = CaffeGraph.from_prototxt(
        small_nets['inception_small']['prototxt'])
    assert inception.feeds(weighted=True)['loss3/classifier'] == (
        'inception_3a/1x1', 'inception_3a/3x3', 'inception_3a/5x5',
        'inception_3a/pool_proj')
    assert model.weighted_between('conv1', 'res2a') == \
        list(model.layer_names[:15])


def test_new_head_sizes():
    model = CaffeGraph.from_prototxt(RESNET, n_classes=3)
    assert model.fc5.W.shape == (3, 16) and model.n_classes == 3
    assert 'num_output: 3' in model.definition()
    squeeze = CaffeGraph.from_prototxt(
        data_path('caffe', 'squeeze_small.prototxt'), n_classes=7)
    assert squeeze.classifier_name == 'conv10'  # no InnerProduct
    assert squeeze['conv10'].W.shape == (7, 24, 1, 1)
    assert run(squeeze, images(squeeze)).shape == (2, 7)


BN_NET = '''
input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" %s }
layer { name: "sc" type: "Scale" bottom: "bn" top: "bn"
        scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "bn" top: "fc"
        inner_product_param { num_output: 2 } }
'''


def bn_model(tmp_path, params=''):
    path = tmp_path / 'bn.prototxt'
    path.write_text(BN_NET % params)
    caffemodel = str(tmp_path / 'bn.caffemodel')
    blobs = write_random_caffemodel(str(path), caffemodel, seed=4)['bn']
    model = CaffeGraph.from_prototxt(str(path))
    import_caffemodel(model, caffemodel)
    return model, blobs


def test_batchnorm_training_follows_caffe(tmp_path):
    """batch_norm_layer.cpp: normalize by the batch mean and (biased)
    variance; blobs <- maf * blobs + (mean, m/(m-1) * variance), factor <-
    maf * factor + 1."""
    model, (sum_mean, sum_var, factor) = bn_model(
        tmp_path, 'batch_norm_param { moving_average_fraction: 0.9 '
                  'eps: 0.01 }')
    bn = model['bn']
    assert not bn.keep_statistics
    x = np.random.RandomState(5).normal(2, 3, (4, 3, 5, 5)).astype('f')
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    m = 4 * 5 * 5
    with chainer.using_config('train', True):
        y = model.forward(x, stop='sc').array
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 0.01)
    assert np.abs(y - expected).max() < 1e-5
    new_factor = 0.9 * factor[0] + 1
    np.testing.assert_allclose(
        bn.mean, (0.9 * sum_mean + mean) / new_factor, rtol=1e-5)
    np.testing.assert_allclose(
        bn.var, (0.9 * sum_var + m / (m - 1) * var) / new_factor, rtol=1e-5)
    np.testing.assert_allclose(bn.factor, [new_factor], rtol=1e-6)
    # test mode: the stored statistics
    y = run(model, x, stop='sc')
    expected = (x - bn.mean[:, None, None]) / np.sqrt(
        bn.var[:, None, None] + 0.01)
    assert np.abs(y - expected).max() < 1e-5


def test_batchnorm_keeps_statistics_when_global_or_frozen(tmp_path):
    model, _ = bn_model(tmp_path, 'batch_norm_param { use_global_stats: '
                                  'true }')
    bn = model['bn']
    assert bn.keep_statistics
    x = np.random.RandomState(6).normal(2, 3, (4, 3, 5, 5)).astype('f')
    before = bn.mean.copy(), bn.var.copy(), bn.factor.copy()
    with chainer.using_config('train', True):
        trained = model.forward(x, stop='sc').array
    assert np.abs(trained - run(model, x, stop='sc')).max() < 1e-6
    assert all(np.array_equal(a, b) for a, b in
               zip(before, (bn.mean, bn.var, bn.factor)))
    bn.enable_update()  # back to the prototxt's choice
    assert bn.keep_statistics
    model, _ = bn_model(tmp_path)
    bn = model['bn']
    assert not bn.keep_statistics
    bn.disable_update()  # what freezing the layer does
    assert bn.keep_statistics
    bn.enable_update()
    assert not bn.keep_statistics


def test_training_a_graph_with_a_frozen_prefix(small_nets):
    """FineTuneNet + CaffeSGD + freeze_layers on ResNet-style blocks: the
    frozen prefix (BatchNorm included) does not change, the rest does."""
    model = loaded(small_nets['resnet_small'])
    k = model.layer_names.index('res2b_branch2a')
    assert k in model.valid_cuts()
    net = FineTuneNet(model, k, trunk_backend='chainer')
    classifier = chainer.links.Classifier(net)
    optimizer = CaffeSGD(lr=0.01, momentum=0.9)
    optimizer.setup(classifier)
    set_caffe_lr_policy(model, ['fc5'], 5e-4)
    freeze_layers(model, model.layer_names[:k])
    frozen = {n: [a.copy() for a in _state(model[n])]
              for n in model.layer_names}
    x = images(model, n=8, seed=9)
    t = np.arange(8) % 5
    with chainer.using_config('train', True):
        for _ in range(2):
            optimizer.update(classifier, x, t)
    for name in model.layer_names:
        same = all(np.array_equal(a, b) for a, b in
                   zip(frozen[name], _state(model[name])))
        assert same == (name in model.layer_names[:k]), name


def _state(link):
    arrays = [p.array for p in link.params()]
    return arrays + [getattr(link, n) for n in sorted(link._persistent)]


def test_gradients_through_the_dag():
    """Numerical check of backward through Split/Slice/Eltwise/Concat/
    two-bottom Scale (mixed net) and batch-statistics BatchNorm (ResNet,
    training mode), in float64."""
    for name, train in (('mixed_small', False), ('resnet_small', True)):
        with chainer.using_config('dtype', np.float64):
            model = CaffeGraph.from_prototxt(data_path('caffe',
                                                       name + '.prototxt'))
        rng = np.random.RandomState(10)
        for param in model.params():
            assert param.dtype == np.float64
            param.array[...] = rng.uniform(0.5, 1.5, param.shape) * np.sign(
                rng.normal(size=param.shape))
        x = rng.normal(0, 1, (2,) + model.net_input_shape)
        gy = rng.normal(0, 1, (2, model.n_classes))
        with chainer.using_config('train', train):
            gradient_check.check_backward(
                lambda h: model(h), x, gy, eps=1e-4, atol=1e-4, rtol=1e-3,
                dtype=np.float64, no_grads=None)


@pytest.mark.parametrize('loc, scale', [(2, 3), (100, 0.5)])
def test_batchnorm_then_scale_is_one_pass_with_chainers_values_and_grads(
        tmp_path, loc, scale):
    """A BatchNorm on its stored statistics and the Scale after it run as
    one pass; its output and the gradients of the input and of the
    Scale's W and bias are Chainer's F.fixed_batch_normalization's with
    gamma = W, beta = bias, also for a channel whose mean is 200 times its
    std (a gradient folded through the per-channel coefficients would
    lose digits there)."""
    model, _ = bn_model(tmp_path, 'batch_norm_param { use_global_stats: '
                                  'true eps: 0.001 }')
    bn, sc = model['bn'], model['sc']
    rng = np.random.RandomState(8)
    sc.W.array[...] = rng.uniform(0.5, 2, 3)
    sc.b.array[...] = rng.normal(0, 1, 3)
    x = rng.normal(loc, scale, (4, 3, 5, 5)).astype(np.float32)
    bn.mean[...] = x.mean(axis=(0, 2, 3)) + rng.normal(0, 0.1, 3) * scale
    bn.var[...] = x.var(axis=(0, 2, 3)) * rng.uniform(0.8, 1.2, 3)
    gy = rng.normal(0, 1, x.shape).astype(np.float32)
    calls = []
    with chainer.using_config('train', True), _FunctionNames(calls):
        xv = chainer.Variable(x.copy())
        y = model.forward(xv, stop='fc')
    assert calls == ['NormalizedAffine'], calls
    y.grad = gy
    sc.cleargrads()
    y.backward()
    xr = chainer.Variable(x.copy())
    gamma = chainer.Variable(sc.W.array.copy())
    beta = chainer.Variable(sc.b.array.copy())
    yr = F.fixed_batch_normalization(xr, gamma, beta, bn.mean, bn.var,
                                     eps=0.001)
    yr.grad = gy
    yr.backward()
    for ours, ref in ((y, yr), (xv.grad_var, xr.grad_var),
                      (sc.W.grad_var, gamma.grad_var),
                      (sc.b.grad_var, beta.grad_var)):
        np.testing.assert_allclose(ours.array, ref.array, rtol=1e-5,
                                   atol=1e-5)
    with chainer.using_config('dtype', np.float64):
        model64, _ = bn_model(tmp_path, 'batch_norm_param { '
                                        'use_global_stats: true }')
    with chainer.using_config('train', True):
        gradient_check.check_backward(
            lambda h: model64.forward(h, stop='fc'), x.astype(np.float64),
            gy.astype(np.float64), eps=1e-4, atol=1e-4, rtol=1e-3,
            dtype=np.float64, no_grads=None)


class _FunctionNames(chainer.FunctionHook):
    """Records the label of every function that runs forward."""

    def __init__(self, calls):
        self.calls = calls

    def forward_preprocess(self, function, in_data):
        self.calls.append(function.label)


@pytest.mark.parametrize('text, message', [
    ('layer { name: "c" type: "Convolution" bottom: "nothing" top: "c" '
     'convolution_param { num_output: 2 kernel_size: 1 } }',
     'layer c reads nothing, which no earlier layer writes'),
    ('layer { name: "a" type: "Pooling" bottom: "data" top: "a" '
     'pooling_param { kernel_size: 2 stride: 2 } }'
     'layer { name: "b" type: "Pooling" bottom: "data" top: "b" '
     'pooling_param { kernel_size: 2 stride: 2 } }',
     'exactly one output blob; found a, b'),
    ('layer { name: "a" type: "Pooling" bottom: "data" top: "a" '
     'pooling_param { kernel_size: 2 stride: 2 } }'
     'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "a" '
     'top: "e" }', 'layer e (Eltwise): inputs differ in shape: 3x8x8, 3x4x4'),
    ('layer { name: "s" type: "Scale" bottom: "data" bottom: "data" '
     'top: "s" scale_param { axis: 0 bias_term: true } }',
     'two-bottom form is supported with axis 0 and no bias_term only'),
    ('layer { name: "params" type: "Convolution" bottom: "data" top: "p" '
     'convolution_param { num_output: 2 kernel_size: 1 } }',
     'clashes with an attribute'),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
     'convolution_param { num_output: 4 kernel_size: 1 group: 2 } }',
     '3 inputs and 4 outputs do not split into 2 groups'),
])
def test_unusable_nets_name_the_layer(text, message):
    header = 'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
    with pytest.raises(CaffeModelError) as e:
        CaffeGraph.from_text(header + text, source='t.prototxt')
    assert message in str(e.value) and 't.prototxt' in str(e.value)
    assert '\n' not in str(e.value)


def test_unsupported_layer_types_are_listed_together():
    text = '''
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" }
layer { name: "bn" type: "BatchNorm" bottom: "up" top: "up" }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" }
layer { name: "pow" type: "Power" bottom: "crop" top: "pow" }
layer { name: "fc" type: "InnerProduct" bottom: "pow" top: "fc"
        inner_product_param { num_output: 2 } }'''
    with pytest.raises(CaffeModelError) as e:
        CaffeGraph.from_text(text, source='x.prototxt')
    assert str(e.value) == ('x.prototxt: unsupported Caffe layer types: '
                            'up (Deconvolution), crop (Crop), pow (Power)')


def test_model_file_keeps_batchnorm_statistics(small_nets, tmp_path):
    model = loaded(small_nets['resnet_small'])
    path = str(tmp_path / 'resnet.npz')
    save_model(path, model, list('abcde'),
               CaffePreprocess(size=(36, 36), crop_size=32))
    again, meta, _ = load_model(path)
    assert meta['layer_names'] == list(model.layer_names)
    assert np.array_equal(again['bn2a_branch1'].var,
                          model['bn2a_branch1'].var)
    x = images(model)
    assert np.array_equal(run(again, x), run(model, x))
    assert again['bn_conv1'].keep_statistics  # use_global_stats: true


def test_softmax_inside_the_net_is_kept():
    text = '''
input: "data" input_shape { dim: 1 dim: 4 dim: 3 dim: 3 }
layer { name: "att" type: "Softmax" bottom: "data" top: "att" }
layer { name: "mul" type: "Eltwise" bottom: "data" bottom: "att" top: "mul"
        eltwise_param { operation: PROD } }
layer { name: "fc" type: "InnerProduct" bottom: "mul" top: "fc"
        inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }'''
    model = CaffeGraph.from_text(text)
    assert model.layer_order == ('att', 'mul', 'fc')
    x = images(model)
    h = run(model, x, stop='fc')
    assert np.allclose(h, x * F.softmax(x, axis=1).array, atol=1e-6)
