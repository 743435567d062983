"""finetune.training.surgery on graph nets (the small nets of
tests/assets/caffe), and fine-tuning runs on them through fit()."""
import os

import chainer
import numpy as np
import pytest

import finetune
from finetune.weights.conversion import ConversionOptions
from finetune.weights.conversion import convert_caffemodel
from finetune.common.errors import FinetuneError
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.models.model_file import load_model
from finetune.models.model_file import read_model_meta
from finetune.training.fit import load_and_plan
from finetune.training.surgery import check_freeze_set
from finetune.training.surgery import frozen_cut
from finetune.training.surgery import parse_head_spec
from finetune.training.layer_spec import parse_layer_spec
from finetune.training.surgery import replace_head
from finetune.weights.registry import pretrained_model
from tests.support.paths import data_path
from tests.support.photos import write_style_folder


@pytest.fixture
def resnet(small_nets, tmp_path):
    """(model file of the random-weight small ResNet, the caffemodel's
    blobs)."""
    files = small_nets['resnet_small']
    out = str(tmp_path / 'resnet_small.npz')
    convert_caffemodel(files['caffemodel'], out, ConversionOptions(
        prototxt=files['prototxt'], resize=(40, 40)))
    return out, files['weights']


def test_ranges_may_end_at_any_layer_and_up_to(resnet):
    net, _, _ = load_model(resnet[0])
    assert parse_layer_spec('conv1-res2a', net) == [
        'conv1', 'bn_conv1', 'scale_conv1', 'res2a_branch1', 'bn2a_branch1',
        'scale2a_branch1', 'res2a_branch2a', 'bn2a_branch2a',
        'scale2a_branch2a', 'res2a_branch2b', 'bn2a_branch2b',
        'scale2a_branch2b', 'res2a_branch2c', 'bn2a_branch2c',
        'scale2a_branch2c']
    assert parse_layer_spec('up-to:res2a_relu', net) == parse_layer_spec(
        'conv1-res2a', net)
    assert parse_layer_spec('up-to:scale_conv1', net) == [
        'conv1', 'bn_conv1', 'scale_conv1']
    with pytest.raises(FinetuneError, match="unknown layer 'res9'"):
        parse_layer_spec('up-to:res9', net)


def test_a_trained_layer_feeding_a_frozen_one_is_refused(resnet):
    net, _, _ = load_model(resnet[0])
    check_freeze_set(net, parse_layer_spec('up-to:res2a', net))
    with pytest.raises(FinetuneError) as error:
        check_freeze_set(net, ['res2a_branch2b', 'bn2a_branch2b'])
    assert str(error.value).startswith(
        '--freeze: scale2a_branch2a is trained but feeds the frozen '
        'res2a_branch2b')


def test_the_frozen_cut_is_one_a_single_blob_crosses(resnet):
    net, _, _ = load_model(resnet[0])
    names = net.layer_names
    # up to res2a_branch1's Scale: the branch2 path is still open there
    frozen = names[:names.index('scale2a_branch1') + 1]
    assert frozen_cut(net, frozen) == names.index('scale2a_branch1') - 2
    assert frozen_cut(net, parse_layer_spec('up-to:res2a', net)) == \
        names.index('res2b_branch2a')


def test_replace_head_keeps_batchnorm_statistics(resnet):
    path, blobs = resnet
    net, meta, _ = load_model(path)
    new = replace_head(net, meta, ['fc5'], 3)
    bn = new['bn2a_branch2b']
    mean, var, factor = blobs['bn2a_branch2b']
    scale = 0 if factor[0] == 0 else 1 / factor[0]
    np.testing.assert_allclose(bn.mean, mean * scale, rtol=1e-6)
    np.testing.assert_allclose(bn.var, var * scale, rtol=1e-6)
    assert new['fc5'].W.shape[0] == 3


def test_a_replaced_batchnorm_learns_batch_statistics(resnet):
    """bn2a_branch1 says use_global_stats: true, as deploy files do; once
    re-initialized it has no statistics to keep, so a training step
    normalizes by the batch and moves its mean off zero, as Caffe's TRAIN
    phase does (a kept one would stay at mean 0, factor 0)."""
    path, _ = resnet
    net, meta, _ = load_model(path)
    assert net['bn2a_branch1'].keep_statistics
    new = replace_head(net, meta, ['bn2a_branch1', 'fc5'], 3)
    bn = new['bn2a_branch1']
    assert np.array_equal(bn.mean, np.zeros_like(bn.mean))
    x = np.random.RandomState(0).uniform(
        -50, 50, (4,) + net.net_input_shape).astype(np.float32)
    with chainer.using_config('train', True):
        new(x)
    assert np.abs(bn.mean).max() > 0 and bn.factor[0] == 1
    # the layers not replaced keep what the prototxt says
    assert new['bn2a_branch2a'].keep_statistics == \
        net['bn2a_branch2a'].keep_statistics


def test_fine_tuning_a_resnet_keeps_frozen_statistics(resnet, tmp_path):
    """Frozen BatchNorm layers keep their stored mean and variance; those
    that train update them (Caffe's moving average)."""
    path, _ = resnet
    data = write_style_folder(tmp_path / 'photos')
    result = finetune.fit(finetune.TrainConfig(
        data=str(data), pretrained=path, freeze='up-to:res2a',
        replace='fc5', epochs=2, batchsize=4, val_split=0.25, loaderjob=0,
        lr=0.01, out=str(tmp_path / 'out')))
    before, _, _ = load_model(path)
    after, _, _ = load_model(result.model_final)
    for name in ('bn_conv1', 'bn2a_branch2c'):
        assert np.array_equal(before[name].mean, after[name].mean), name
        assert np.array_equal(before[name].var, after[name].var), name
        assert np.array_equal(before['res2a_branch2c'].W.array,
                              after['res2a_branch2c'].W.array)
    assert not np.array_equal(before['bn2b_branch2a'].mean,
                              after['bn2b_branch2a'].mean)
    assert not np.array_equal(before['res2b_branch2a'].W.array,
                              after['res2b_branch2a'].W.array)
    assert result.metrics is not None and os.path.isfile(result.model_best)


@pytest.mark.parametrize('name, head', [
    ('resnet_small', ['fc5']), ('inception_small', ['loss3/classifier']),
    ('mixed_small', ['fc']),  # not its squeeze-excitation se_fc
    ('squeeze_small', ['conv10'])])  # no InnerProduct: the last Convolution
def test_replace_auto_is_the_last_inner_product(name, head, small_nets):
    net = CaffeGraph.from_prototxt(small_nets[name]['prototxt'])
    assert parse_head_spec('auto', net) == head


def test_replace_auto_on_alexnet_is_the_registry_head_fc6_to_fc8(
        alexnet_npz, alexnet_caffemodels):
    """AlexNet and CaffeNet are CaffeGraphs whose classifier is fc8;
    ``auto`` means fc6-fc8 on them, as the registry's alexnet entry
    recommends: for its weights (also as the converted file), for a
    caffemodel of that layout under another name, and for CaffeNet, which
    has no entry. A net whose layers differ (Flickr-Style's fc8_flickr)
    gets its last InnerProduct."""
    assert finetune.TrainConfig(data='photos').replace == 'auto'
    entry = pretrained_model('alexnet')
    for arch in (AlexNet, CaffeNet):
        net = arch(initialW=chainer.initializers.Zero())
        assert parse_head_spec('auto', net, entry) == ['fc6', 'fc7', 'fc8']
        assert parse_head_spec('auto', net) == ['fc6', 'fc7', 'fc8']
    assert parse_head_spec('fc8', net, entry) == ['fc8']
    flickr = CaffeGraph.from_prototxt(data_path(
        'caffe', 'flickr_style_deploy.prototxt'))
    assert parse_head_spec('auto', flickr) == ['fc8_flickr']
    for pretrained in (alexnet_npz, alexnet_caffemodels['v2']):
        plan = load_and_plan(finetune.TrainConfig(data='photos',
                                                  pretrained=pretrained))
        assert plan.head == ['fc6', 'fc7', 'fc8'], pretrained
    assert os.path.basename(alexnet_caffemodels['v2']) != entry.filename


def test_alexnet_freeze_sets_are_checked_like_any_net():
    net = AlexNet(initialW=chainer.initializers.Zero())
    check_freeze_set(net, parse_layer_spec('conv1-conv5', net))
    with pytest.raises(finetune.FinetuneError,
                       match='conv1 is trained but feeds the frozen conv2'):
        check_freeze_set(net, ['conv2', 'conv3'])
    assert frozen_cut(net, parse_layer_spec('conv1-conv5', net)) == 5


def test_the_default_head_of_lenet_is_its_last_inner_product(digits,
                                                            tmp_path):
    """The real Caffe LeNet (a prototxt net: conv1, conv2, ip1, ip2) with
    no --replace: ip2 alone is new, ip1 keeps its pretrained weights."""
    data, pretrained = digits
    result = finetune.fit(finetune.TrainConfig(
        data=data, pretrained=pretrained, freeze='conv1-ip1', epochs=1,
        batchsize=16, val_split=0.3, loaderjob=0, out=str(tmp_path)))
    meta = read_model_meta(result.model_final)
    assert meta['replaced'] == ['ip2']
    assert meta['frozen'] == ['conv1', 'conv2', 'ip1']
    before, _, _ = load_model(pretrained)
    after, _, _ = load_model(result.model_final)
    assert np.array_equal(before.ip1.W.array, after.ip1.W.array)
    assert not np.array_equal(before.ip2.W.array, after.ip2.W.array)
