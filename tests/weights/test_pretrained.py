"""finetune.pretrained(NAME or path) and the stage's import layering."""
import pkgutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

import finetune
import finetune.caffe
from tests.support.paths import data_path

#: Every module of the format readers/writers, found on disk.
CAFFE_MODULES = sorted(m.name for m in pkgutil.iter_modules(
    finetune.caffe.__path__))


@pytest.mark.parametrize('module', CAFFE_MODULES)
def test_caffe_format_modules_do_not_import_models(module):
    code = ('import sys, finetune.caffe.%s\n'
            'print([m for m in sys.modules if m.startswith('
            '"finetune.models")])' % module)
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


def test_registry_imports_neither_chainer_nor_numpy():
    code = ('import sys, finetune.weights.registry\n'
            'print([m for m in sys.modules if m.split(".")[0] in '
            '("chainer", "numpy")])')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


def test_open_nsfw_by_name_matches_opencv(open_nsfw):
    """The net's logits on real photos equal OpenCV dnn's on the real
    caffemodel; class names and preprocessing are the registry's."""
    import finetune.weights.registry  # NOQA: a loaded stage keeps the name
    nsfw = finetune.pretrained('open_nsfw')
    assert nsfw.class_names == ['sfw', 'nsfw']
    assert nsfw.entry.name == 'open_nsfw'
    assert (nsfw.entry.head, nsfw.entry.freeze) == ('fc_nsfw', 'up-to:pool')
    assert nsfw.preprocess.size == (256, 256)
    assert nsfw.preprocess.crop_size == 224
    np.testing.assert_array_equal(nsfw.preprocess.mean.ravel(),
                                  [104, 117, 123])
    batch = np.stack([nsfw.preprocess(data_path(name)) for name in
                      ('cat.jpg', 'fish-bike.jpg')])
    import chainer
    with chainer.using_config('train', False):
        ours = nsfw.net(batch).array
    reference = cv2.dnn.readNetFromCaffe(open_nsfw['prototxt'],
                                         open_nsfw['caffemodel'])
    reference.setInput(batch)
    theirs = reference.forward('fc_nsfw').reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_caffemodel_path_with_its_prototxt(small_nets):
    files = small_nets['resnet_small']
    net = finetune.pretrained(files['caffemodel'], files['prototxt'])
    assert net.entry is None
    assert len(net.class_names) == net.net.n_classes
    np.testing.assert_array_equal(net.net[net.net.layer_names[0]].W.array,
                                  files['weights'][net.net.layer_names[0]][0])
