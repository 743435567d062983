"""The commands: argparse plus one library call, the same option names for
the same things, arguments checked before anything is read or written, and
``import finetune`` light."""
import dataclasses
import os
import subprocess
import sys

import pytest

from finetune import convert, export, fetch, gather, predict
from finetune.common.errors import FinetuneError
from finetune.training import config as train_config
from finetune.training.config import TrainConfig
from tests.support.processes import run_module

PARSERS = {'train': train_config.build_parser(), 'predict':
           predict.build_parser(), 'convert': convert.build_parser(),
           'export': export.build_parser(), 'fetch': fetch.build_parser(),
           'gather': gather.build_parser()}


def options(name):
    return set(PARSERS[name]._option_string_actions)


def test_train_options_are_the_trainconfig_fields():
    fields = dataclasses.fields(TrainConfig)
    parser = PARSERS['train']
    defaults = vars(parser.parse_args(['--data', 'x']))
    assert set(defaults) == {f.name for f in fields}
    for field in fields:
        assert '--' + field.name.replace('_', '-') in options('train')
        if field.name != 'data':
            assert defaults[field.name] == field.default, field.name
        assert field.metadata['doc'], field.name
    assert train_config.config_from_args(parser.parse_args(
        ['--data', 'x', '-B', '8', '-E', '3', '-j', '0', '-o', 'r', '-r',
         'auto', '--gpu', '1'])) == TrainConfig(
        data='x', batchsize=8, epochs=3, loaderjob=0, out='r',
        resume='auto', device=1)


def test_the_same_thing_has_the_same_name_everywhere():
    for name in PARSERS:
        assert {'-o', '--out'} <= options(name), name
    for name in ('train', 'predict', 'export'):
        assert {'-B', '--batchsize'} <= options(name), name
    for name in ('train', 'predict'):
        assert {'-j', '--loaderjob', '-d', '--device', '--gpu'} <= \
            options(name), name
    assert {'-E', '--epochs', '-r', '--resume'} <= options('train')


def test_a_bare_resume_continues_the_run_in_out_in_train_as_in_predict():
    """predict's --resume is a flag; train's takes a snapshot, and bare it
    means the latest snapshot in --out, the same thing."""
    train = PARSERS['train']
    assert train.parse_args(['--data', 'x', '--resume']).resume == 'auto'
    assert train.parse_args(['--data', 'x', '-r', 's.npz']).resume == 's.npz'
    assert train.parse_args(['--data', 'x']).resume is None
    predict = PARSERS['predict']
    assert predict.parse_args(['--model', 'm', '--resume', 'a.jpg']).resume


@pytest.mark.parametrize('flag,value', [('-B', '0'), ('--batchsize', '-3'),
                                        ('-j', '-1'), ('--batch', 'x')])
def test_a_shared_number_option_refuses_the_same_values_everywhere(
        tmp_path, digits, flag, value):
    """train, predict and export refuse a batch of no images (and train and
    predict negative loader counts) with exit 2 and one line naming the
    option, before reading anything."""
    data, pretrained = digits
    argvs = {'train': ['--data', data, '--pretrained', pretrained,
                       '-o', str(tmp_path / 'run')],
             'predict': ['--model', pretrained, data],
             'export': ['--model', pretrained, '-o', str(tmp_path / 'm.onnx')]}
    for name, argv in argvs.items():
        if flag not in options(name):
            continue
        result = run_module('finetune.' + name, *argv, flag, value)
        assert_refused(result, value)
        last = result.stderr.strip().splitlines()[-1]
        assert any(spelling in last for spelling in
                   PARSERS[name]._option_string_actions[flag].option_strings
                   + ['batchsize', 'loaderjob']), last
    assert not os.listdir(str(tmp_path))


def test_train_help_shows_the_registry_and_every_layer_spec_form():
    """--help lists every registry name and recommended head, and each
    layer-spec form it shows selects on BVLC AlexNet what it says."""
    import re
    from finetune.models import AlexNet
    from finetune.training.layer_spec import LAYER_SPEC_FORMS
    from finetune.training.layer_spec import parse_layer_spec
    from finetune.weights.registry import REGISTRY
    text = ' '.join(PARSERS['train'].format_help().split())
    pretrained = re.search(r'--pretrained PRETRAINED registry name \((.*?)\)',
                           text).group(1)
    assert pretrained.split(', ') == sorted(REGISTRY)
    assert 'fc6-fc8 on alexnet' in text and 'fc_nsfw on open_nsfw' in text
    freeze = re.search(r'--freeze FREEZE (.*?) \(default: none\)',
                       text).group(1).replace('up- to:', 'up-to:')
    shown = re.findall(r"'([^']+)' \(", freeze)
    assert shown == [spec for spec, _ in LAYER_SPEC_FORMS]
    convs = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
    expected = {'conv1-conv5': convs, 'conv1,conv2': convs[:2],
                'conv1,conv2-conv4': convs[:4], 'up-to:pool5': convs,
                'all': convs + ['fc6', 'fc7', 'fc8'], 'none': []}
    net = AlexNet()
    assert {spec: parse_layer_spec(spec, net) for spec in shown} == expected
    # and training takes each as --freeze with the default --replace
    # (all but 'all', which is for --replace: nothing would train)
    from finetune.training.recipe import surgery_plan
    from finetune.training.config import TrainConfig
    for spec in shown:
        config = TrainConfig(data='photos', freeze=spec)
        if spec == 'all':
            with pytest.raises(FinetuneError, match='both replaced and '
                               'frozen: fc6, fc7, fc8'):
                surgery_plan(config.surgery, net)
        else:
            assert surgery_plan(config.surgery, net) == (
                ['fc6', 'fc7', 'fc8'], expected[spec])
    config = TrainConfig(data='photos', replace='all')
    assert surgery_plan(config.surgery, net) == (expected['all'], [])


def test_help_groups_options_by_stage():
    text = PARSERS['train'].format_help()
    for group in train_config.GROUPS:
        assert '\n%s:\n' % group in text, group


@pytest.mark.parametrize('flag,value,message', [
    ('--val-split', '1', '--val-split 1.0: must be in [0, 1)'),
    ('--val-split', '-0.1', '--val-split -0.1: must be in [0, 1)'),
    ('--val-split', 'nan', '--val-split nan: must be a finite number in '
     '[0, 1)'),
    ('--batchsize', '0', '--batchsize 0: must be >= 1'),
    ('--epochs', '0', '--epochs 0: must be >= 1'),
    ('--cache-crops', '0', '--cache-crops 0: must be >= 1'),
    ('--head-lr-mult', '-1', '--head-lr-mult -1.0: must be >= 0'),
    ('--head-lr-mult', 'inf', '--head-lr-mult inf: must be a finite number '
     '>= 0'),
    ('--lr-gamma', '-0.1', '--lr-gamma -0.1: must be > 0'),
    ('--lr-gamma', '0', '--lr-gamma 0.0: must be > 0'),
    ('--lr', 'nan', '--lr nan: must be a finite number > 0'),
    ('--momentum', '1', '--momentum 1.0: must be in [0, 1)'),
    ('--weight-decay', '-0.0001', '--weight-decay -0.0001: must be >= 0'),
    ('--time-limit', 'inf', '--time-limit inf: must be a finite number >= '
     '0'),
    ('--seed', '-1', '--seed -1: must be in [0, 4294967295]'),
    ('--freeze', 'conv9', "--freeze: unknown layer 'conv9'"),
    ('--replace', 'ip2-conv1', "--replace: bad layer range 'ip2-conv1'"),
])
def test_train_refuses_bad_arguments_before_writing(tmp_path, digits, flag,
                                                    value, message):
    data, pretrained = digits
    out = tmp_path / 'out'
    result = run_module('finetune.train', '--data', data, '--pretrained',
                        pretrained, '-o', str(out), '--replace', 'ip2',
                        flag, value)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()  # nothing scanned, nothing written


@pytest.mark.parametrize('flag', ['--batchsize', '--top'])
@pytest.mark.parametrize('value', ['0', '-3'])
def test_predict_refuses_non_positive_sizes(tmp_path, flag, value):
    result = run_module('finetune.predict', '--model', 'm.npz', 'x.jpg',
                        flag, value)
    assert result.returncode == 2
    assert 'expected an integer >= 1' in result.stderr.strip().splitlines(
    )[-1]


def test_import_finetune_and_the_light_commands_do_not_load_chainer():
    code = ('import sys, finetune, finetune.fetch, finetune.gather, '
            'finetune.weights.registry\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("chainer", "cupy", "cv2")))')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
    listed = run_module('finetune.fetch', '--list')
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        'alexnet', 'flickr_style', 'open_nsfw']


def test_public_names_load_on_first_use():
    code = ('import sys, finetune\n'
            'assert "chainer" not in sys.modules\n'
            'finetune.TrainConfig, finetune.fit, finetune.load\n'
            'print("chainer" in sys.modules)')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    assert result.stdout.strip() == 'True', result.stderr


# --- every number option of every command: non-finite and meaningless
# values are refused naming the option (issue 20, items 4 and 9) --------

NUMBER_REFUSALS = [
    ('gather', ['list.txt', '-o', 'out'], '--timeout', ['0', '-1', 'nan',
                                                        'inf', '-inf']),
    ('gather', ['list.txt', '-o', 'out'], '--deadline', ['0', 'nan']),
    ('gather', ['list.txt', '-o', 'out'], '--retries', ['-1', '1.5']),
    ('gather', ['list.txt', '-o', 'out'], '--max-bytes', ['0', '0M']),
    ('gather', ['list.txt', '-o', 'out'], '--min-size', ['-1']),
    ('fetch', ['alexnet'], '--timeout', ['0', '-1', 'nan', 'inf']),
    ('fetch', ['alexnet'], '--retries', ['-1']),
    ('convert', ['m.caffemodel'], '--scale', ['nan', 'inf', '0', '-1']),
    ('export', ['--model', 'm.npz', '-o', 'm.onnx'], '--opset',
     ['0', '99', 'nan']),
    ('demo', [], '--fraction', ['nan', '0', '-0.5', '1.5', 'inf']),
]


def parser_of(name):
    from finetune import demo
    return demo.build_parser() if name == 'demo' else PARSERS[name]


@pytest.mark.parametrize('name,argv,flag,value', [
    (name, argv, flag, value) for name, argv, flag, values in
    NUMBER_REFUSALS for value in values])
def test_number_options_refuse_meaningless_values(name, argv, flag, value,
                                                  capsys):
    with pytest.raises(SystemExit) as exit_status:
        parser_of(name).parse_args(argv + ['%s=%s' % (flag, value)])
    assert exit_status.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'argument %s' % flag in last and 'expected' in last, last
    assert repr(value) in last, last


def assert_refused(result, *words):
    """Exit 2, a last line naming ``words``, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr
    assert all(word in lines[-1] for word in words), result.stderr


def test_gather_with_a_zero_timeout_writes_nothing(tmp_path):
    listing = tmp_path / 'urls.txt'
    listing.write_text('http://127.0.0.1:9/a.jpg cat\n')
    out = tmp_path / 'photos'
    result = run_module('finetune.gather', str(listing), '-o', str(out),
                        '--timeout', '0', '--no-progress')
    assert_refused(result, '--timeout', "'0'")
    assert not out.exists()


@pytest.mark.parametrize('which', ['list', 'link to list', 'label names'])
def test_gather_report_over_an_input_is_refused(tmp_path, which):
    listing = tmp_path / 'urls.txt'
    listing.write_text('http://127.0.0.1:9/a.jpg 0\n')
    names = tmp_path / 'names.txt'
    names.write_text('cat\n')
    os.symlink(str(listing), str(tmp_path / 'link.txt'))
    report = {'list': listing, 'link to list': tmp_path / 'link.txt',
              'label names': names}[which]
    out = tmp_path / 'photos'
    result = run_module('finetune.gather', str(listing), '-o', str(out),
                        '--label-names', str(names), '--report',
                        str(report), '--no-progress', '--timeout', '0.2',
                        '--retries', '0')
    assert_refused(result, '--report', str(report), 'input')
    assert listing.read_text() == 'http://127.0.0.1:9/a.jpg 0\n'
    assert names.read_text() == 'cat\n'
    assert not out.exists()


def test_train_refuses_an_out_inside_data_before_writing(tmp_path, digits):
    data, pretrained = digits
    before = sorted(os.listdir(data))
    result = run_module('finetune.train', '--data', data, '--pretrained',
                        pretrained, '-o', os.path.join(data, 'result'),
                        '--replace', 'ip2')
    assert_refused(result, '--out', 'inside the data folder')
    assert sorted(os.listdir(data)) == before


def test_train_refuses_a_label_file_inside_out_before_writing(tmp_path,
                                                              digits):
    data, pretrained = digits
    out = tmp_path / 'out'
    out.mkdir()
    label_file = out / 'list.txt'
    label_file.write_text('0/%s 0\n1/%s 1\n' % (
        sorted(os.listdir(os.path.join(data, '0')))[0],
        sorted(os.listdir(os.path.join(data, '1')))[0]))
    result = run_module('finetune.train', '--data', data, '--pretrained',
                        pretrained, '-o', str(out), '--replace', 'ip2',
                        '--label-file', str(label_file))
    assert_refused(result, '--image-list', 'inside --out')
    assert os.listdir(out) == ['list.txt']
