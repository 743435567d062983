"""What ``convert`` refuses (non-finite weights and options, an output
that is one of its inputs), the temporaries it cleans up, and how little
memory it holds (issue 20 items 4, 5, 12; issue 23 item 4)."""
import fcntl
import hashlib
import os
import shutil

import chainer
import numpy as np
import pytest

from finetune import convert
from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.weights.conversion import ConversionOptions
from finetune.weights.conversion import caffemodel_to_model
from finetune.weights.conversion import convert_caffemodel
from finetune.caffe.importer import import_caffemodel
from finetune.caffe.writer import write_caffemodel
from finetune.common.errors import CaffeModelError
from finetune.common.fileio import write_npz
from finetune.models import CaffeGraph
from finetune.models.model_file import save_model
from finetune.weights.conversion import default_preprocess


def lenet_weights(lenet_files):
    """{layer: [blobs]} of the real LeNet, as writable copies."""
    net = read_caffemodel(lenet_files['caffemodel'])
    return {l.name: [np.array(b) for b in l.blobs] for l in net.layers
            if l.blobs}


def lenet_with(lenet_files, tmp_path, layer, blob, index, value):
    """The real LeNet with one weight replaced: the caffemodel's path."""
    weights = lenet_weights(lenet_files)
    weights[layer][blob].reshape(-1)[index] = value
    path = str(tmp_path / 'lenet.caffemodel')
    write_caffemodel(path, read_prototxt_param(lenet_files['prototxt']),
                     weights)
    return path


def run_convert(capsys, *args):
    """``python -m finetune.convert ARGS`` in-process: (status, stderr)."""
    try:
        status = convert.main(list(args))
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize('layer, blob, index, value, shown', [
    ('ip1', 0, 12345, np.nan, 'nan'),
    ('conv2', 1, 7, -np.inf, '-inf'),
])
def test_non_finite_weights_are_refused_at_convert(lenet_files, tmp_path,
                                                   capsys, layer, blob,
                                                   index, value, shown):
    caffemodel = lenet_with(lenet_files, tmp_path, layer, blob, index, value)
    shape = lenet_weights(lenet_files)[layer][blob].shape
    status, err = run_convert(capsys, caffemodel, '--prototxt',
                              lenet_files['prototxt'])
    assert status == 2
    assert err == ('error: %s: layer %s: blob %d holds %s at index %d of %s; '
                   'a weight must be a finite number\n'
                   % (caffemodel, layer, blob, shown, index, shape))
    assert sorted(os.listdir(tmp_path)) == ['lenet.caffemodel']


def test_import_refuses_a_nan_weight_and_loads_nothing(lenet_files,
                                                       tmp_path):
    caffemodel = lenet_with(lenet_files, tmp_path, 'ip2', 1, 3, np.nan)
    model = CaffeGraph.from_prototxt(lenet_files['prototxt'])
    before = model.conv1.W.array.copy()
    with pytest.raises(CaffeModelError, match='layer ip2: blob 1 holds nan '
                                              'at index 3'):
        import_caffemodel(model, caffemodel)
    assert np.array_equal(model.conv1.W.array, before)


@pytest.mark.parametrize('options, message', [
    (dict(scale=float('nan')), '--scale nan: the input multiplier must be '
                               'a finite number > 0'),
    (dict(scale=float('inf')), '--scale inf: the input multiplier must be '
                               'a finite number > 0'),
    (dict(scale=0.0), '--scale 0.0: the input multiplier must be a finite '
                      'number > 0'),
    (dict(scale=-1), '--scale -1: the input multiplier must be a finite '
                     'number > 0'),
    (dict(scale='2'), "--scale '2': the input multiplier must be a finite "
                      'number > 0'),
    (dict(mean=np.array([104, np.nan, 123], np.float32)),
     '--mean: the mean holds NaN or infinity'),
    (dict(resize=(0, 32)), '--resize (0, 32): expected two integers in '
                           '1..4096 (H, W)'),
    (dict(resize=(32,)), '--resize (32,): expected two integers in '
                         '1..4096 (H, W)'),
    (dict(resize=(32, 5000)), '--resize (32, 5000): expected two integers '
                              'in 1..4096 (H, W)'),
])
def test_conversion_options_refuse_unusable_values(options, message):
    with pytest.raises(CaffeModelError) as e:
        ConversionOptions(**options)
    assert str(e.value) == message


def sha1(path):
    with open(path, 'rb') as f:
        return hashlib.sha1(f.read()).hexdigest()


def test_a_caffemodel_named_npz_is_not_replaced_by_its_conversion(
        lenet_files, tmp_path, capsys):
    caffemodel = str(tmp_path / 'lenet.npz')
    shutil.copy(lenet_files['caffemodel'], caffemodel)
    before = sha1(caffemodel)
    status, err = run_convert(capsys, caffemodel, '--prototxt',
                              lenet_files['prototxt'], '--out', str(tmp_path))
    assert status == 2
    assert err == ('error: --out %s: that is an input of this '
                   'command; choose another output file\n' % caffemodel)
    assert sha1(caffemodel) == before
    assert os.listdir(tmp_path) == ['lenet.npz']


@pytest.mark.parametrize('target', ['caffemodel', 'prototxt', 'labels',
                                    'mean'])
def test_out_may_not_be_an_input_through_a_link(lenet_files, tmp_path,
                                                capsys, target):
    mean = str(tmp_path / 'mean.npy')
    np.save(mean, np.full((1, 28, 28), 33, np.float32))
    inputs = {'caffemodel': lenet_files['caffemodel'],
              'prototxt': lenet_files['prototxt'],
              'labels': lenet_files['labels'], 'mean': mean}
    out = str(tmp_path / 'model.npz')
    os.symlink(os.path.abspath(inputs[target]), out)
    before = sha1(inputs[target])
    status, err = run_convert(
        capsys, inputs['caffemodel'], '--prototxt', inputs['prototxt'],
        '--labels', inputs['labels'], '--mean', mean, '--out', out)
    assert status == 2
    assert err == ('error: --out %s: that is an input of this command; '
                   'choose another output file\n' % out)
    assert sha1(inputs[target]) == before and os.path.islink(out)


def temporary_name(out, tag):
    """A name ``atomic_write`` gives its temporary for ``out``."""
    return '.%s.%s.tmp.npz' % (os.path.basename(out), tag)


def test_the_next_convert_removes_its_own_stale_temporaries(
        lenet_files, tmp_path, capsys):
    out = str(tmp_path / 'lenet.npz')
    stale = [temporary_name(out, tag) for tag in ('k1ll3d_a', 'x_y_z_09')]
    busy = temporary_name(out, 'busy0000')
    others = [temporary_name(str(tmp_path / 'other.npz'), 'k1ll3d_a'),
              '.lenet.npz.notmine.txt', 'lenet.npz.abcdefgh.tmp.npz']
    for name in stale + [busy] + others:
        (tmp_path / name).write_bytes(b'partial')
    os.symlink(str(tmp_path / others[0]),
               str(tmp_path / temporary_name(out, 'a_link00')))
    with open(tmp_path / busy, 'rb') as held:  # a conversion writing it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        status, err = run_convert(capsys, lenet_files['caffemodel'],
                                  '--prototxt', lenet_files['prototxt'],
                                  '--out', out)
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == sorted(
        [busy, temporary_name(out, 'a_link00'), 'lenet.npz'] + others)


def test_an_output_in_a_folder_yet_to_be_made(lenet_files, tmp_path,
                                              capsys):
    out = str(tmp_path / 'new' / 'sub' / 'lenet.npz')
    status, err = run_convert(capsys, lenet_files['caffemodel'], '--prototxt',
                              lenet_files['prototxt'], '--out', out)
    assert status == 0, err
    assert os.listdir(tmp_path / 'new' / 'sub') == ['lenet.npz']


def test_weights_are_bound_to_the_file_not_copied(alexnet_caffemodels):
    """The converted model's weights are read-only views of the memory-
    mapped caffemodel: converting holds no copy of them."""
    model = caffemodel_to_model(alexnet_caffemodels['v1'])
    for param in (model.fc6.W, model.conv1.b):
        assert not param.array.flags.writeable
        assert not param.array.flags.owndata
    assert np.array_equal(model.fc6.W.array,
                          alexnet_caffemodels['weights']['fc6'][0])


def resident_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def test_write_npz_releases_memory_mapped_members(tmp_path):
    """Writing a 64 MiB member read from a memory map leaves less than a
    quarter of it resident (the pages are released once written)."""
    source = str(tmp_path / 'source.bin')
    np.arange(16 * 2 ** 20, dtype=np.float32).tofile(source)
    mapped = np.memmap(source, np.float32, mode='r')
    before = resident_bytes()
    write_npz(str(tmp_path / 'out.npz'), {'a': mapped})
    assert resident_bytes() - before < 16 * 2 ** 20
    with np.load(str(tmp_path / 'out.npz')) as npz:
        assert np.array_equal(npz['a'], np.arange(16 * 2 ** 20,
                                                  dtype=np.float32))


@pytest.mark.parametrize('name', ['resnet_small', 'inception_small'])
def test_streamed_conversion_equals_a_loaded_model(small_nets, tmp_path,
                                                   name):
    """The weights convert writes are bound to the caffemodel, not copied,
    yet every array of the file equals, bitwise, what ``save_model`` writes
    for a model the weights were copied into (BatchNorm statistics divided
    by their factor included)."""
    files = small_nets[name]
    bound = caffemodel_to_model(files['caffemodel'], files['prototxt'])
    assert not any(p.array.flags.writeable for p in bound.params())
    out = convert_caffemodel(files['caffemodel'], str(tmp_path / 'a.npz'),
                             ConversionOptions(prototxt=files['prototxt']))
    loaded = CaffeGraph.from_prototxt(files['prototxt'],
                                      initialW=chainer.initializers.Zero())
    import_caffemodel(loaded, files['caffemodel'])
    reference = str(tmp_path / 'b.npz')
    options = ConversionOptions(prototxt=files['prototxt'])
    save_model(reference, loaded, ['class%d' % i
                                   for i in range(loaded.n_classes)],
               default_preprocess(loaded, options))
    with np.load(out) as a, np.load(reference) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            if key != '__meta__':
                assert a[key].dtype == b[key].dtype, key
                assert a[key].tobytes() == b[key].tobytes(), key


def test_a_net_of_four_input_channels_is_refused_before_writing(
        small_nets, tmp_path):
    """No image gives 4 channels, and no model file may hold such a net:
    convert says so naming the prototxt (it wrote a file load refused)."""
    files = small_nets['mixed_small']
    with pytest.raises(CaffeModelError, match=r'mixed_small\.prototxt: the '
                       r'net takes 4 input channels'):
        convert_caffemodel(files['caffemodel'], str(tmp_path / 'a.npz'),
                           ConversionOptions(prototxt=files['prototxt']))
    assert os.listdir(tmp_path) == []


def test_kernel_size_zero_is_blamed_on_the_prototxt(lenet_files, tmp_path,
                                                    capsys):
    prototxt = tmp_path / 'deploy.prototxt'
    text = open(lenet_files['prototxt']).read()
    assert text.count('kernel_size: 5') == 2
    prototxt.write_text(text.replace('kernel_size: 5', 'kernel_size: 0', 1))
    status, err = run_convert(capsys, lenet_files['caffemodel'], '--prototxt',
                              str(prototxt), '--out',
                              str(tmp_path / 'lenet.npz'))
    assert status == 2
    assert err == ('error: %s: layer conv1 (Convolution): kernel_size must '
                   'be >= 1, got 0\n' % prototxt)
    assert sorted(os.listdir(tmp_path)) == ['deploy.prototxt']


def fake_caffemodel(tmp_path, names, fc8_shape=(3, 4096)):
    """A caffemodel of InnerProduct layers called ``names``, fc8's weights
    of ``fc8_shape``, the others one weight each."""
    from finetune.caffe import schema
    net = schema.NetParameter(name='fake')
    for name in names:
        net.layer.add(name=name, type='InnerProduct')
    weights = {name: [np.zeros(fc8_shape if name == 'fc8' else 1,
                               np.float32)] for name in names}
    path = str(tmp_path / 'fake.caffemodel')
    write_caffemodel(path, net, weights)
    return path


@pytest.mark.parametrize('shape', [(4096,), (0, 4096), (10, 12),
                                   (2, 1, 10, 4096)])
def test_an_alexnet_fc8_of_the_wrong_shape_is_refused(tmp_path, capsys,
                                                      shape):
    caffemodel = fake_caffemodel(tmp_path, ['conv1', 'norm1', 'pool1',
                                            'fc8'], shape)
    status, err = run_convert(capsys, caffemodel)
    assert status == 2
    assert err == ('error: %s: layer fc8: weights of shape %s; an '
                   'AlexNet/CaffeNet fc8 has (n_classes, 4096)\n'
                   % (caffemodel, shape))


def test_long_layer_lists_are_cut_in_messages(tmp_path, capsys):
    caffemodel = fake_caffemodel(tmp_path, ['x%d' % i for i in range(500)])
    status, err = run_convert(capsys, caffemodel)
    assert status == 2
    assert err == ('error: %s: not an AlexNet/CaffeNet layout (layers: %s '
                   '... and 490 more); pass --prototxt with its deploy '
                   'definition\n' % (caffemodel, ', '.join(
                       'x%d' % i for i in range(10))))


@pytest.mark.parametrize('content, message', [
    (None, 'not a mean image of at most 16777216 values'),
    (b'\x93NUMPY\x01\x00v\x00{\'descr\': \'<f4\', \'fortran_order\': False, '
     b'\'shape\': (100000, 100000), }' + b' ' * 43 + b'\n',
     'cannot read: '),
])
def test_a_mean_file_is_checked_before_it_is_read(tmp_path, capsys,
                                                  lenet_files, content,
                                                  message):
    """A .npy whose header claims 10^10 values (40 GB) is refused from the
    header: never allocated."""
    mean = str(tmp_path / 'mean.npy')
    if content is None:
        np.save(mean, np.zeros((1, 4097, 4097), np.float32))
    else:
        with open(mean, 'wb') as f:
            f.write(content)
    status, err = run_convert(capsys, lenet_files['caffemodel'], '--prototxt',
                              lenet_files['prototxt'], '--mean', mean,
                              '--out', str(tmp_path / 'x.npz'))
    assert status == 2
    assert err.startswith('error: --mean %s: ' % mean) and message in err
    assert err.count('\n') == 1
