"""finetune.common.cli.command: an interrupt stays an interrupt."""
import pytest

from finetune.common.cli import command


def test_an_error_raised_while_cleaning_up_after_ctrl_c_is_an_interrupt(
        capsys):
    """Ctrl-C, then a cleanup that fails (a worker's pipe already gone):
    the command was interrupted (exit 130, the interrupt's line), not a
    traceback and exit 1."""
    @command(on_interrupt='continue with X')
    def main(argv=None):
        try:
            raise KeyboardInterrupt
        finally:
            raise ValueError('broken pipe of a stopped worker')
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 130
    assert capsys.readouterr().err == 'interrupted; continue with X\n'


def test_other_errors_are_not_taken_for_interrupts():
    @command
    def main(argv=None):
        raise ValueError('a bug')
    with pytest.raises(ValueError, match='a bug'):
        main([])
