"""Every command's parser, built and compared: an option that means one
thing has one name, help text and type in every command, and the older
spellings of a renamed option still parse to the same value."""
import importlib
import subprocess
import sys

import pytest

from finetune.training.config import build_parser as train_parser

COMMANDS = ('convert', 'demo', 'export', 'fetch', 'gather', 'predict')


def parsers():
    """``{command: argparse parser}`` of every CLI."""
    found = {name: importlib.import_module('finetune.' + name).build_parser()
             for name in COMMANDS}
    found['train'] = train_parser()
    return found


def options_by_dest():
    """``{dest: [(command, argparse action)]}`` over every CLI."""
    found = {}
    for name, parser in parsers().items():
        for action in parser._actions:
            if action.option_strings and action.dest != 'help':
                found.setdefault(action.dest, []).append((name, action))
    return found


# The options shared on purpose: their definitions must be one.
SHARED = ('device', 'class_names')


@pytest.mark.parametrize('dest', SHARED)
def test_a_shared_option_is_defined_once(dest):
    uses = options_by_dest()[dest]
    assert len(uses) >= 2, uses
    flags = {tuple(a.option_strings) for _, a in uses}
    types = {a.type for _, a in uses}
    metavars = {a.metavar for _, a in uses}
    assert len(flags) == 1, uses
    assert len(types) == 1, uses
    assert len(metavars) == 1, uses


def test_the_class_name_file_has_one_name_everywhere():
    uses = dict(options_by_dest()['class_names'])
    assert set(uses) == {'convert', 'gather'}
    helps = {a.help for a in uses.values()}
    assert len(helps) == 1
    for flag in ('--labels', '--label-names', '--label-file'):
        # the old spellings are not another option in any command
        owners = [(name, a.dest) for name, parser in parsers().items()
                  for a in parser._actions if flag in a.option_strings]
        assert all(dest in ('class_names', 'image_list')
                   for _, dest in owners), owners


@pytest.mark.parametrize('flag', ['--class-names', '--labels',
                                  '--label-names'])
def test_convert_takes_each_spelling_of_the_class_name_file(flag):
    parser = importlib.import_module('finetune.convert').build_parser()
    args = parser.parse_args(['net.caffemodel', flag, 'names.txt'])
    assert args.class_names == 'names.txt'


@pytest.mark.parametrize('flag', ['--class-names', '--labels',
                                  '--label-names'])
def test_gather_takes_each_spelling_of_the_class_name_file(flag):
    parser = importlib.import_module('finetune.gather').build_parser()
    args = parser.parse_args(['urls.txt', '-o', 'photos', flag, 'n.txt'])
    assert args.class_names == 'n.txt'


def test_an_option_name_means_one_thing_across_commands():
    """The same flag in two commands writes the same field, takes a value
    in both or in neither (but --resume: a bare one means the run in
    --out in both, test_commands.py), and its spellings that other
    commands share are the same set (a command may keep an old alias of
    its own, such as export's --onnx)."""
    owners = {}
    for name, parser in parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                owners.setdefault(flag, {})[name] = action
    shared = {flag for flag, by_name in owners.items() if len(by_name) > 1}
    assert {'-o', '-B', '--batch', '-j', '--gpu', '--resume', '--tta',
            '--timeout', '--retries'} <= shared
    for flag in shared:
        actions = owners[flag].values()
        assert len({a.dest for a in actions}) == 1, flag
        assert len({frozenset(a.option_strings) & shared
                    for a in actions}) == 1, flag
        if flag not in ('-r', '--resume'):
            assert len({a.nargs != 0 for a in actions}) == 1, flag


@pytest.mark.parametrize('dest,commands', [
    ('batchsize', {'export', 'predict', 'train'}),
    ('model', {'export', 'predict'})])
def test_batch_size_and_model_flags_are_spelt_alike(dest, commands):
    """``-B/--batchsize/--batch`` and ``--model`` are the same flags
    wherever they appear (their value types differ on purpose: export
    also takes 'dynamic')."""
    uses = [(name, a) for name, a in options_by_dest()[dest]]
    assert {name for name, _ in uses} == commands
    assert len({tuple(a.option_strings) for _, a in uses}) == 1, uses


def test_every_spelling_of_the_batch_size_parses_in_predict():
    parser = importlib.import_module('finetune.predict').build_parser()
    for flag in ('-B', '--batchsize', '--batch'):
        args = parser.parse_args(['--model', 'm.npz', flag, '7', 'x.jpg'])
        assert args.batchsize == 7


HELP_PROBE = '''
import runpy, sys
sys.argv = [%(name)r, '--help']
try:
    runpy.run_module(%(module)r, run_name='__main__')
except SystemExit as stop:
    assert stop.code == 0, stop.code
print('imported:', ' '.join(sorted(m for m in ('chainer', 'cupy', 'cv2', 'onnx')
                      if m in sys.modules)))
'''


@pytest.mark.parametrize('name', COMMANDS + ('train',))
def test_help_imports_neither_chainer_nor_opencv(name):
    """Every command is lazy: ``--help`` (and argument errors) come before
    the heavy imports, as they do for ``train``."""
    probe = HELP_PROBE % {'name': name, 'module': 'finetune.' + name}
    done = subprocess.run([sys.executable, '-c', probe],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'usage:' in done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == 'imported:', done.stdout
