"""The project's exceptions.

Every error a user can cause with bad input (a corrupt file, a wrong shape, a
missing layer) is a :class:`FinetuneError` whose message is one line naming
the file and what is wrong. The command-line tools print that line and exit
with status 2 instead of showing a traceback.
"""


def one_line(error, first_line_only=False):
    """An exception as one line of text: its message with whitespace runs
    collapsed (only its first line with ``first_line_only``, for messages
    that go on with a dump, as onnx's checker writes), else its type's
    name; ``''`` for None."""
    if error is None:
        return ''
    text = str(error).strip()
    if first_line_only:
        text = text.splitlines()[0] if text else ''
    return ' '.join(text.split()) or type(error).__name__


class FinetuneError(Exception):
    """Base class: a problem with the user's input, described in one line."""


class CaffeModelError(FinetuneError):
    """A caffemodel or prototxt cannot be read or does not fit the model."""


class DataError(FinetuneError):
    """An image folder, label file or image cannot be used."""


class DownloadError(FinetuneError):
    """A download failed or its content did not verify."""


class CheckpointError(FinetuneError):
    """A snapshot or model checkpoint cannot be read."""
