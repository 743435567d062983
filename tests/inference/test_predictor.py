"""finetune.inference.predictor: ``finetune.load(path).predict(...)``."""
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.common.errors import DataError
from tests.conftest import data_path


def test_predict_takes_one_path_image_or_array_and_refuses_empty(
        lenet_files, tmp_path):
    from finetune.caffe.conversion import ConversionOptions
    from finetune.caffe.conversion import convert_caffemodel
    npz = convert_caffemodel(lenet_files['caffemodel'],
                             str(tmp_path / 'lenet.npz'), ConversionOptions(
                                 prototxt=lenet_files['prototxt'],
                                 labels=lenet_files['labels'],
                                 scale=1 / 256))
    model = finetune.load(npz)
    path = data_path('cat.jpg')
    labels, probs = model.predict(path)  # one path, not its characters
    assert len(labels) == 1 and probs.shape == (1, 10)
    _, from_list = model.predict([path])
    np.testing.assert_array_equal(from_list, probs)
    # a path is decoded with PIL's draft mode, an image in memory fully
    image = Image.open(path).convert('RGB')
    _, expected = model.predict([image])
    for same in (image, np.asarray(image), np.asarray(image.convert('L'))):
        _, again = model.predict(same)
        np.testing.assert_allclose(again, expected, atol=1e-5)
    with pytest.raises(DataError, match='empty image'):
        model.predict(Image.new('RGB', (0, 0)))
    with pytest.raises(DataError, match='expected uint8'):
        model.predict(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize('cut', ['empty', 'half', 'text'])
def test_broken_model_files_are_one_line(alexnet_npz, tmp_path, cut):
    from finetune.common.errors import CheckpointError
    from tests.conftest import run_module
    data = open(alexnet_npz, 'rb').read()
    broken = tmp_path / 'model.npz'
    broken.write_bytes({'empty': b'', 'half': data[:len(data) // 2],
                        'text': b'hello\n'}[cut])
    with pytest.raises(CheckpointError, match='model.npz'):
        finetune.load(str(broken))
    for command in (['finetune.predict', '--model', str(broken),
                     data_path('cat.jpg')],
                    ['finetune.export', '--model', str(broken), '-o',
                     str(tmp_path / 'm.onnx')]):
        result = run_module(*command)
        assert result.returncode == 2, result.stderr[-1000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
