"""README.md against the code: every command it shows parses with the real
options, every backquoted ``--flag`` it attributes to a command exists, and
the architecture picture names exactly the modules of each stage."""
import os
import re
import shlex

import pytest

from finetune import convert, demo, export, fetch, gather, predict
from finetune.training import config as train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {'train': train_config.build_parser, 'predict': predict.build_parser,
           'convert': convert.build_parser, 'export': export.build_parser,
           'fetch': fetch.build_parser, 'gather': gather.build_parser,
           'demo': demo.build_parser}
#: the stage folders of the architecture picture, as it names them
STAGES = ('finetune/caffe', 'finetune/weights', 'models', 'finetune/sources',
          'finetune/data', 'finetune/training', 'finetune/inference',
          'finetune/common')


def readme():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        return f.read()


def shown_commands():
    """(command, argv) of each ``python -m finetune.X`` line of the
    README's indented or fenced code, continuation lines joined, comments
    and shell redirections dropped."""
    text = re.sub(r'\\\n\s*', ' ', readme())
    found = []
    for line in text.splitlines():
        if not line.startswith(('    ', 'srun', 'mpiexec')):
            continue
        match = re.search(r'python -m finetune\.(\w+)(.*)', line)
        if match:
            argv = shlex.split(match.group(2), comments=True)
            ends = [i for i, a in enumerate(argv)
                    if a in ('&', '&&', ';', '|') or a.startswith('>')]
            found.append((match.group(1), argv[:min(ends + [len(argv)])]))
    return found


def test_the_readme_shows_every_command():
    named = set(re.findall(r'python -m finetune\.(\w+)', readme()))
    assert named == set(PARSERS)
    assert set(PARSERS) - {name for name, _ in shown_commands()} <= {'demo'}


@pytest.mark.parametrize('name,argv', shown_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_command_the_readme_shows_parses(name, argv):
    parser = PARSERS[name]()
    parser.exit_on_error = False
    try:
        parser.parse_args(argv)
    except SystemExit:  # pragma: no cover - argparse prints the reason
        pytest.fail('README: python -m finetune.%s %s does not parse'
                    % (name, ' '.join(argv)))


#: backquoted flags of other programs the README names, and the program
OTHER_PROGRAMS = {'--no-build-isolation': 'pip',
                  '--allow-run-as-root': 'mpiexec',
                  '--cli-heap': 'benchmarks/bench_model.py'}


def test_every_flag_the_readme_names_is_an_option_of_some_command():
    options = set()
    for build in PARSERS.values():
        options.update(build()._option_string_actions)
    named = set(re.findall(r'`(--[a-z][a-z0-9-]*)', readme()))
    assert len(named) > 30, 'the README names flags in backquotes'
    assert sorted(named - options - set(OTHER_PROGRAMS)) == []
    for flag, program in OTHER_PROGRAMS.items():
        assert flag not in options, flag
        if program.startswith('benchmarks/'):
            with open(os.path.join(ROOT, program)) as f:
                assert "'%s'" % flag in f.read(), (flag, program)


def architecture_block():
    text = readme()
    section = text[text.index('## Architecture'):]
    start = section.index('```') + 3
    return section[start:section.index('```', start)]


def test_the_architecture_picture_names_every_module_of_every_stage():
    block = architecture_block()
    for stage in STAGES:
        assert os.path.basename(stage) + '/' in block, stage
    named = set(re.findall(r'\b(\w+)\.py\b', block))
    common = re.search(r'common/:(.*)', block, re.S).group(1)
    named.update(re.sub(r'\([^)]*\)', '', common).replace(',', ' ').split())
    modules = set()
    for stage in STAGES:
        folder = os.path.join(ROOT, stage)
        modules.update(name[:-3] for name in os.listdir(folder)
                       if name.endswith('.py') and name != '__init__.py')
    assert sorted(modules - named) == [], 'modules the picture leaves out'
    assert sorted(named - modules) == [], 'names of no module'
