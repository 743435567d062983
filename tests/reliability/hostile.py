"""The reliability corpus's hostile files and misuse (issue 20): files
crafted by someone else (snapshots that unpickle code, model files with
lying metadata or bombs inside, prototxts with impossible values) and a
careless user's values, each refused in one line naming the file or
option, with nothing written and no code run.

:func:`write_hostile_files` writes the crafted files into
``inputs/hostile`` from the corpus's real LeNet model file and run
folders; :func:`hostile_cases` lists the cases. A crafted pickle's payload
creates ``inputs/hostile/PWNED``: the judge sees any such file as changed
outside the outputs, and :func:`no_code_ran` says so by name.
"""
import json
import os
import re
import shutil
import zipfile

import numpy as np

from finetune.training.extensions import latest_snapshot
from tests.reliability.judge import Case
from tests.reliability.judge import PY
from tests.reliability.judge import api
from tests.reliability.judge import exact
from tests.reliability.judge import module

#: ``python -c`` running ``python -m MODULE ARGS`` and failing (exit 99)
#: when the process's peak RSS went past LIMIT MiB: a bomb inflated
MEMORY_LIMIT = '''
import os, runpy, sys
limit = int(sys.argv.pop(1))
sys.argv[0] = sys.argv.pop(1)
try:
    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
finally:  # VmHWM: ru_maxrss would count the parent's peak too
    with open('/proc/self/status') as status:
        peak = next(int(line.split()[1]) for line in status
                    if line.startswith('VmHWM:')) // 1024
    if peak > limit:
        print('peak RSS %d MiB, over %d MiB' % (peak, limit), file=sys.stderr)
        os._exit(99)
'''

#: the crafted model files: name -> what is wrong with them
MODEL_FILES = {
    'pickled_meta': '__meta__ is a pickle that runs a command',
    'truncated_json': '__meta__ is half a JSON document',
    'deep_json': '__meta__ nests lists 100,000 deep',
    'ten_classes': 'n_classes is "ten"',
    'names_mismatch': 'class names are 3 for 10 outputs',
    'no_arch': 'metadata lacks arch',
    'huge_layer': 'stored prototxt says ip1 num_output: 1000000000',
    'zero_size': 'preprocess size is [0, 0]',
    'nan_weights': 'ip2/W holds a NaN',
    'bomb': 'conv1/W inflates to 1 GiB of zeros',
}

#: prototxts with impossible values, each read with the real LeNet
#: caffemodel: name -> (the text replaced, its replacement, layer, what
#: the error names: the field, or the size a too large array would take)
PROTOTXTS = {
    'stride0': ('num_output: 20\n    kernel_size: 5\n    stride: 1',
                'num_output: 20\n    kernel_size: 5\n    stride: 0', 'conv1',
                r'\bstride\b'),
    'kernel0': ('num_output: 20\n    kernel_size: 5', 'num_output: 20\n'
                '    kernel_size: 0', 'conv1', r'\bkernel_size\b'),
    'group0': ('num_output: 50\n', 'num_output: 50\n    group: 0\n', 'conv2',
               r'\bgroup\b'),
    'huge_output': ('num_output: 500', 'num_output: 1000000000', 'ip1',
                    r'\bnum_output\b|\d+(\.\d+)? [GT]iB'),
    'huge_input': ('dim: 28 dim: 28', 'dim: 100000 dim: 100000', 'data',
                   r'\d+(\.\d+)? GiB'),
}


class Payload:
    """Unpickles as ``os.system(command)``: what an attacker puts in a
    snapshot or model file."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def marker(corpus):
    return corpus.path('hostile', 'PWNED')


def write_hostile_files(corpus):
    """The crafted files under ``inputs/hostile`` (needs the LeNet model
    file and the ``noval_run`` run folder of :func:`build_inputs`)."""
    directory = corpus.path('hostile')
    os.makedirs(directory)
    payload = Payload('touch %s' % marker(corpus))
    with np.load(corpus.path('lenet.npz')) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for name in MODEL_FILES:
        _write_npz(os.path.join(directory, name + '.npz'),
                   crafted_model(name, dict(arrays), payload))
    _write_bomb(os.path.join(directory, 'bomb.npz'), arrays)
    with open(corpus.path('lenet', 'lenet.prototxt')) as f:
        prototxt = f.read()
    for name, (old, new, _, _) in PROTOTXTS.items():
        assert old in prototxt, name
        with open(os.path.join(directory, name + '.prototxt'), 'w') as f:
            f.write(prototxt.replace(old, new, 1))
    with open(corpus.path('lenet', 'lenet.caffemodel'), 'rb') as f:
        caffemodel = f.read()
    with open(os.path.join(directory, 'nan.caffemodel'), 'wb') as f:
        f.write(with_a_nan(caffemodel, arrays['ip2/W']))
    run = os.path.join(directory, 'pickled_run')
    shutil.copytree(corpus.path('noval_run'), run)
    snapshot = latest_snapshot(run)
    with np.load(snapshot) as npz:
        members = {name: npz[name] for name in npz.files}
    members['updater/iteration'] = np.array(payload, dtype=object)
    _write_npz(snapshot, members)


def crafted_model(name, arrays, payload):
    """The LeNet model file's members with what ``name`` says is wrong."""
    meta = json.loads(str(arrays['__meta__']))
    text = None
    if name == 'pickled_meta':
        arrays['__meta__'] = np.array(payload, dtype=object)
    elif name == 'truncated_json':
        text = json.dumps(meta)[:200]
    elif name == 'deep_json':
        text = '[' * 100000 + ']' * 100000
    elif name == 'ten_classes':
        meta['n_classes'] = 'ten'
    elif name == 'names_mismatch':
        meta['class_names'] = meta['class_names'][:3]
    elif name == 'no_arch':
        del meta['arch']
    elif name == 'huge_layer':
        meta['prototxt'] = meta['prototxt'].replace('num_output: 500',
                                                    'num_output: 1000000000')
    elif name == 'zero_size':
        meta['preprocess']['size'] = [0, 0]
    elif name == 'nan_weights':
        arrays['ip2/W'] = arrays['ip2/W'].copy()
        arrays['ip2/W'][0, 0] = np.nan
    if name != 'pickled_meta':
        arrays['__meta__'] = np.array(json.dumps(meta) if text is None
                                      else text)
    return arrays


def with_a_nan(caffemodel, weights):
    """The bytes ``caffemodel`` with the first of ``weights`` (a layer's
    float32 weights, as converted) made NaN where the file stores it."""
    stored = np.ascontiguousarray(weights, '<f4').tobytes()[:16]
    at = caffemodel.index(stored)
    assert caffemodel.find(stored, at + 1) < 0, 'ambiguous weights'
    return caffemodel[:at] + np.float32(np.nan).tobytes() + caffemodel[at + 4:]


def _write_npz(path, arrays):
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            with archive.open(name + '.npy', 'w') as member:
                np.lib.format.write_array(member, np.asanyarray(value),
                                          allow_pickle=True)


def _write_bomb(path, arrays, gib=1):
    """``arrays`` with ``conv1/W`` a deflated member of ``gib`` GiB of
    zeros (about 1 MB on disk), streamed: never held in memory."""
    shape = (gib * 256, 1024, 1024)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            if name != 'conv1/W':
                with archive.open(name + '.npy', 'w') as member:
                    np.lib.format.write_array(member, value)
                continue
            with archive.open(name + '.npy', 'w', force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {
                    'descr': '<f4', 'fortran_order': False, 'shape': shape})
                block = bytes(64 << 20)
                for _ in range(gib * 16):
                    member.write(block)


# ---------------------------------------------------------------- checks

def without_marker(corpus, setup=None):
    """Set-up: no payload marker left by an earlier case, then ``setup``."""
    def prepare(folder):
        if os.path.exists(marker(corpus)):
            os.remove(marker(corpus))
        if setup:
            setup(folder)
    return prepare


def no_code_ran(corpus):
    def check(folder, result):
        if os.path.exists(marker(corpus)):
            os.remove(marker(corpus))
            return 'the pickle ran: %s was created' % marker(corpus)
    return check


# ---------------------------------------------------------------- cases

def hostile_cases(corpus):
    """Issue 20's items 1-4 and 10: crafted snapshots, model files and
    prototxts; non-finite values."""
    path = corpus.path
    hostile = lambda name: path('hostile', name)  # noqa: E731
    run = hostile('pickled_run')
    snapshot = lambda: latest_snapshot(run)  # noqa: E731 (once it exists)
    train = ['train', '--data', path('digits'), '--pretrained',
             path('lenet.npz'), '--replace', 'ip2', '-E', '2', '-B', '16',
             '-j', '0', '--val-split', '0', '-o', 'out']
    cases = [
        Case('20.1 train --resume a snapshot that unpickles a command',
             module(*train, '--resume', snapshot),
             setup=without_marker(corpus),
             last=r'^error: --resume \S*pickled_run/snapshot_iter_\d+: ',
             check=no_code_ran(corpus)),
        Case('20.1 train --resume auto into that snapshot',
             module(*train, '--resume', 'auto'),
             setup=without_marker(corpus, lambda folder: shutil.copytree(
                 run, os.path.join(folder, 'out'), symlinks=True)),
             last=r'^error: --resume out/snapshot_iter_\d+: ',
             check=no_code_ran(corpus)),
    ]
    digits0 = path('digits', '0')
    for name, what in MODEL_FILES.items():
        model = hostile(name + '.npz')
        named = r'^error: (CheckpointError: )?%s: ' % exact(model)
        check = no_code_ran(corpus)
        cases += [
            Case('20.2 predict a model file whose %s' % what,
                 [PY, '-c', MEMORY_LIMIT, '600', 'finetune.predict',
                  '--model', model, digits0, '-j', '0'],
                 setup=without_marker(corpus), last=named, check=check),
            Case('20.2 finetune.load a model file whose %s' % what,
                 api('finetune.load(%r)' % model), last=named,
                 setup=without_marker(corpus), check=check),
        ]
    cases += [
        Case('20.2 train --pretrained a model file whose %s'
             % MODEL_FILES['pickled_meta'],
             module('train', '--data', path('digits'), '--pretrained',
                    hostile('pickled_meta.npz'), '--replace', 'ip2', '-o',
                    'out'),
             setup=without_marker(corpus),
             last=r'^error: %s: ' % exact(hostile('pickled_meta.npz')),
             check=no_code_ran(corpus)),
        Case('20.10 finetune.load a caffemodel',
             api('finetune.load(%r)' % path('lenet', 'lenet.caffemodel')),
             last=r'^error: CheckpointError: \S*lenet\.caffemodel: .*'
                  r'caffemodel.*finetune\.convert'),
    ]
    for name, (_, _, layer, field) in PROTOTXTS.items():
        prototxt = hostile(name + '.prototxt')
        cases.append(Case(
            '20.3 convert the impossible prototxt %s (layer %s)'
            % (name, layer),
            [PY, '-c', MEMORY_LIMIT, '600', 'finetune.convert',
             path('lenet', 'lenet.caffemodel'), '--prototxt', prototxt,
             '-o', 'm.npz'],
            last=r'^error: %s: .*\b%s\b.*%s' % (exact(prototxt),
                                                re.escape(layer), field)))
    cases.append(Case(
        '20.4 convert a caffemodel holding a NaN weight', module(
            'convert', hostile('nan.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '-o', 'm.npz'),
        last=r'^error: %s: .*ip2.*(NaN|nan|finite)'
             % exact(hostile('nan.caffemodel'))))
    cases.append(Case(
        '20.4 convert --resize past what a model file may hold', module(
            'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '--resize', '99999999', '-o',
            'm.npz'), last=r'^error: --resize .*1\.\.4096'))
    for value in ('nan', 'inf', '0'):
        cases.append(Case(
            '20.4 convert --scale %s' % value, module(
                'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
                path('lenet', 'lenet.prototxt'), '--scale', value, '-o',
                'm.npz'), last=r'--scale'))
    return cases


# ---------------------------------------------------------------- misuse

#: a class folder name a spreadsheet would run as a formula
FORMULA_CLASS = "=cmd|'-C calc'!A0"  # OWASP's example, less its '/'



def write_misuse_files(corpus):
    """Inputs of :func:`misuse_cases` under ``inputs/misuse``: class
    folders with a formula name, an undecodable file name, a class of
    unreadable images; a LAB TIFF; an RGBA digit; URL lists."""
    from PIL import Image
    path = corpus.path
    directory = path('misuse')
    os.makedirs(directory)
    digits = lambda label: sorted(os.listdir(path('digits', label)))  # noqa
    for name, (label, count) in {FORMULA_CLASS: ('0', None),
                                 '+1': ('1', None)}.items():
        os.makedirs(os.path.join(directory, 'formula', name))
        for file in digits(label)[:count]:
            shutil.copy(path('digits', label, file),
                        os.path.join(directory, 'formula', name, file))
    for label in ('0', '1'):
        shutil.copytree(path('digits', label),
                        os.path.join(directory, 'odd_names', label))
    first = digits('1')[0]
    shutil.copy(path('digits', '1', first), os.path.join(
        os.fsencode(directory), b'odd_names/1/bad\xff.png'))
    for label in ('0', '1'):
        shutil.copytree(path('digits', label),
                        os.path.join(directory, 'unreadable_class', label))
    os.makedirs(os.path.join(directory, 'unreadable_class', 'broken'))
    for i in range(3):
        with open(os.path.join(directory, 'unreadable_class', 'broken',
                               '%d.jpg' % i), 'w') as f:
            f.write('not an image %d\n' % i)
    digit = Image.open(path('odd', 'upright.png')).convert('RGB')
    digit.convert('LAB').save(os.path.join(directory, 'lab.tif'))
    ink = Image.new('RGBA', digit.size, (0, 0, 0, 0))  # black ink, clear
    ink.putalpha(Image.open(path('odd', 'upright.png')).convert('L'))
    ink.save(os.path.join(directory, 'rgba_ink.png'))
    url = corpus.server.url
    with open(os.path.join(directory, 'numbered.csv'), 'w') as f:
        f.write('url,label\n%s,0\n' % url('/a.jpg'))
    with open(os.path.join(directory, 'names.txt'), 'w') as f:
        f.write('cat\n')


def cells_are_not_formulas(*names):
    """No cell of the CSVs ``names`` (under the case's folder) starts as a
    formula, and one starts with :data:`FORMULA_CLASS`, escaped."""
    import csv
    dangerous = ('=', '+', '-', '@', '\t', '\r')

    def check(folder, result):
        cells = []
        for name in names:
            with open(os.path.join(folder, name), newline='',
                      encoding='utf-8') as f:
                cells += [cell for row in csv.reader(f) for cell in row]
        formulas = [cell for cell in cells if cell.startswith(dangerous)]
        if formulas:
            return 'formula cells: %s' % formulas[:3]
        if not any(cell.startswith("'" + FORMULA_CLASS) for cell in cells):
            return 'no cell of %s starts with %r, escaped' % (names,
                                                             FORMULA_CLASS)
    return check


def trained_classes(out, expected):
    def check(folder, result):
        with open(os.path.join(folder, out, 'labels.txt'),
                  encoding='utf-8') as f:
            names = f.read().splitlines()
        if names != expected:
            return 'trained on classes %s, not %s' % (names, expected)
    return check


def stale_temporary(name):
    """Set-up: the hidden temporary a killed write of ``name`` leaves
    (as finetune.common.fileio.atomic_write names it)."""
    def setup(folder):
        with open(os.path.join(folder, stale_name(name)), 'wb') as f:
            f.write(b'\0' * 4096)
    return setup


def stale_name(name):
    base, ext = os.path.splitext(name)
    return '.%s.k1ll3d00.tmp%s' % (name, ext)  # mkstemp's 8 characters


def gone(name):
    def check(folder, result):
        if os.path.exists(os.path.join(folder, name)):
            return '%s was left' % name
    return check


def misuse_cases(corpus):
    """Issue 20's items 5-12: outputs over inputs, scans of odd folders,
    formulas in CSVs, odd names and images, values, the Python API."""
    path = corpus.path
    misuse = lambda *parts: path('misuse', *parts)  # noqa: E731
    lenet = path('lenet.npz')
    train = lambda data, *args: module(  # noqa: E731
        'train', '--data', data, '--pretrained', lenet, '--replace', 'ip2',
        '-E', '1', '-B', '16', '-j', '0', '-o', 'out', *args)
    trained = r'^report written to out \(see highest_loss\.csv'
    numbered = misuse('numbered.csv')
    cases = [
        Case('20.5 gather --report the URL list', module(
            'gather', numbered, '-o', 'photos', '--label-names',
            misuse('names.txt'), '--report', numbered, '--no-progress'),
            last=r'--report'),
        Case('20.5 gather --report the --label-names file', module(
            'gather', numbered, '-o', 'photos', '--label-names',
            misuse('names.txt'), '--report', misuse('names.txt'),
            '--no-progress'), last=r'--report'),
        Case('20.5 train --label-file inside --out', train(
            path('digits'), '--label-file', 'out/list.txt'),
            setup=lambda folder: (os.makedirs(os.path.join(folder, 'out')),
                                  shutil.copy(path('noval_run', 'train.txt'),
                                              os.path.join(folder, 'out',
                                                           'list.txt'))),
            last=r'--image-list'),
        Case('20.5 convert X.npz into its own folder (the same name)', module(
            'convert', 'weights.npz', '--prototxt', path('lenet',
                                                         'lenet.prototxt'),
            '--out', '.'),
            setup=lambda folder: shutil.copy(
                path('lenet', 'lenet.caffemodel'),
                os.path.join(folder, 'weights.npz')),
            last=r'weights\.npz'),
        Case('20.6 a class of unreadable images is left out', train(
            misuse('unreadable_class')), status=0, outputs=('out',),
            stream='stdout', last=trained,
            check=trained_classes('out', ['0', '1'])),
        Case('20.7 formula class names are escaped in the reports', train(
            misuse('formula')), status=0, outputs=('out',), stream='stdout',
            last=trained, check=cells_are_not_formulas(
                'out/per_class_accuracy.csv', 'out/confusion_matrix.csv')),
        Case('20.7 formula folder names are escaped in predict', module(
            'predict', '--model', lenet, FORMULA_CLASS, '-o', 'p.csv', '-j',
            '0'), status=0, outputs=('p.csv',),
            setup=lambda folder: shutil.copytree(
                misuse('formula', FORMULA_CLASS),
                os.path.join(folder, FORMULA_CLASS)),
            last=r'images labelled', check=cells_are_not_formulas('p.csv')),
        Case('20.8 train on an undecodable file name', train(
            misuse('odd_names')), status=0, outputs=('out',),
            stream='stdout', last=trained),
        Case('20.8 predict an undecodable file name', module(
            'predict', '--model', lenet, misuse('odd_names'), '-o', 'p.csv',
            '-j', '0'), status=0, outputs=('p.csv',),
            last=r'images labelled'),
        Case('20.8 predict a LAB TIFF', module(
            'predict', '--model', lenet, misuse('lab.tif'), '-j', '0'),
            status=1, last=r': skipped: \S+: undecodable'),
        Case('20.8 finetune.load(...).predict a LAB TIFF', api(
            'finetune.load(%r).predict(%r)' % (lenet, misuse('lab.tif'))),
            last=r'^error: DataError: .*undecodable'),
        Case('20.11 an RGBA image on a gray net is composited on white',
             api('m = finetune.load(%r)\n'
                 'ink = Image.open(%r)\n'
                 'white = Image.new("RGBA", ink.size, (255, 255, 255, 255))\n'
                 'flat = Image.alpha_composite(white, ink).convert("L")\n'
                 'a, b = m.predict([ink, flat])[1]\n'
                 'print(float(abs(a - b).max()) < 1e-6)'
                 % (lenet, misuse('rgba_ink.png'))),
             status=0, stream='stdout', last=r'^True$'),
        Case('20.12 convert removes its own stale temporary', module(
            'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '-o', 'm.npz'), status=0,
            setup=stale_temporary('m.npz'),
            outputs=('m.npz', stale_name('m.npz')), stream='stdout',
            last=r'^wrote m\.npz$', check=gone(stale_name('m.npz'))),
    ]
    for option, value in (('--head-lr-mult', '-1'), ('--lr-gamma', '-1'),
                          ('--lr', 'nan'), ('--momentum', 'inf'),
                          ('--weight-decay', '-1')):
        cases.append(Case('20.9 train %s %s' % (option, value), train(
            path('digits'), option, value), last=re.escape(option)))
    for command, value in (('gather', '0'), ('gather', '-1'),
                           ('gather', 'nan'), ('fetch', '0')):
        argv = [numbered, '-o', 'photos'] if command == 'gather' \
            else ['alexnet']
        cases.append(Case('20.9 %s --timeout %s' % (command, value), module(
            command, *argv, '--timeout', value), last=r'--timeout'))
    cases += [
        Case('20.9 predict(batch_size=0)', api(
            'finetune.load(%r).predict(%r, batch_size=0)'
            % (lenet, path('odd', 'upright.png'))),
            last=r'^error: \w+: .*batch_size'),
        Case("20.10 TrainConfig(batchsize='32')", api(
            "finetune.fit(finetune.TrainConfig(data=%r, pretrained=%r, "
            "out='out', batchsize='32'))" % (path('digits'), lenet)),
            last=r'^error: \w+: .*batchsize'),
        Case("20.10 TrainConfig(mean='imagenet') on a gray net", api(
            "finetune.fit(finetune.TrainConfig(data=%r, pretrained=%r, "
            "out='out', mean='imagenet', loaderjob=0, epochs=1))"
            % (path('digits'), lenet)), last=r'^error: \w+: .*mean'),
        Case('20.10 TrainConfig takes pathlib.Path everywhere', api(
            "import pathlib\n"
            "r = finetune.fit(finetune.TrainConfig(data=pathlib.Path(%r), "
            "pretrained=pathlib.Path(%r), out=pathlib.Path('out'), "
            "replace='ip2', loaderjob=0, epochs=1))\n"
            "print('trained', r.model_final)" % (path('digits'), lenet)),
            status=0, outputs=('out',), stream='stdout',
            last=r'^trained \S*model_final\.npz$'),
    ]
    return cases
