"""finetune.common.errors.one_line: what a command prints of an exception."""
from finetune.common.errors import one_line


def test_one_line_collapses_whitespace_or_names_the_type():
    assert one_line(ValueError('bad\n  value\tin  x.npz')) == \
        'bad value in x.npz'
    assert one_line(KeyError()) == 'KeyError'
    assert one_line(None) == ''


def test_first_line_only_drops_a_dump_after_the_message():
    error = ValueError('Field "shape" of node 3 is invalid\n\n'
                       '==> Context: Bad node spec: input: "x"\n')
    assert one_line(error, first_line_only=True) == \
        'Field "shape" of node 3 is invalid'
    assert one_line(ValueError('\n'), first_line_only=True) == 'ValueError'
