"""Which files are images, and the one vocabulary of what is wrong with one.

Training's folder scan (``problems.csv``), ``gather``'s report and
``predict``'s ``error`` column all name an unusable image with one of the
:data:`PROBLEMS` codes below, optionally followed by ``': '`` and a detail
(PIL's message for ``undecodable``).
"""
import os
import stat

from PIL import Image, UnidentifiedImageError

from finetune.common.errors import one_line

#: File name extensions (lower case) that folder scans list, in training
#: and in prediction alike (what PIL decodes).
IMAGE_EXTENSIONS = frozenset((
    '.jpg', '.jpeg', '.jpe', '.png', '.bmp', '.gif', '.tif', '.tiff',
    '.webp', '.ppm', '.pgm', '.pbm', '.pnm'))

MISSING = 'missing-file'
EMPTY = 'empty-file'
NOT_IMAGE = 'not-image'
TRUNCATED = 'truncated-image'
UNDECODABLE = 'undecodable'
TOO_SMALL = 'too-small'
TOO_LARGE = 'too-large'
UNSUPPORTED_FORMAT = 'unsupported-format'
HIDDEN = 'hidden-file'
NOT_IMAGE_NAME = 'not-an-image-extension'
NOT_REGULAR = 'not-a-regular-file'
BAD_NAME = 'unusable-name'
LINKED_FOLDER = 'linked-folder'

#: code -> what it means, for the README and reports.
PROBLEMS = {
    MISSING: 'the file does not exist (any more)',
    EMPTY: 'the file has 0 bytes',
    NOT_IMAGE: 'the bytes are no image format PIL knows',
    TRUNCATED: 'the image data ends early',
    UNDECODABLE: 'PIL cannot decode it (the detail says why)',
    TOO_SMALL: 'a side is under the minimum size',
    TOO_LARGE: "more pixels than PIL's decompression-bomb limit",
    UNSUPPORTED_FORMAT: 'an image format that is not kept',
    HIDDEN: 'a hidden file or folder (name starts with a dot): not read',
    NOT_IMAGE_NAME: 'the extension is not an image extension: not read',
    NOT_REGULAR: 'a FIFO, socket or device, not a file: never opened',
    BAD_NAME: 'the name is not valid UTF-8 or holds a line break: not '
              'read (rename it)',
    LINKED_FOLDER: 'a link to a folder already scanned (the data folder, '
                   'one above it or another class): not read again',
}

#: What ``str.splitlines`` splits on: a name holding one cannot be a line
#: of ``train.txt`` or ``labels.txt``.
LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'


def is_usable_name(name):
    """False for names that are not valid UTF-8 (undecodable bytes, as
    ``os.fsdecode`` gives them) or that hold a line break."""
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return not any(c in LINE_BREAKS for c in name)


def is_hidden(name):
    """True for hidden names (``.DS_Store``, ``.git``)."""
    return name.startswith('.')


def is_image_name(name):
    """True when ``name``'s extension is in :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def problem_of_exception(error):
    """The problem code (with detail) for an exception PIL raised while
    opening or decoding an image."""
    if isinstance(error, Image.DecompressionBombError):
        return TOO_LARGE
    if isinstance(error, UnidentifiedImageError):
        return NOT_IMAGE
    if isinstance(error, FileNotFoundError):
        return MISSING
    message = one_line(error)
    if 'truncated' in message:
        return TRUNCATED
    return '%s: %s' % (UNDECODABLE, message)


def unsupported_mode(mode):
    """The problem of an image in PIL mode ``mode`` that is not read."""
    return '%s: %s images are not supported' % (UNDECODABLE, mode)


def open_decoded(path):
    """Open the image file ``path`` and decode it fully: a PIL image.

    Raises:
        Exception: whatever PIL raises (see :func:`problem_of_exception`).
    """
    image = Image.open(path)
    image.load()
    return image


def file_problem(path):
    """``MISSING``, ``NOT_REGULAR`` (a FIFO, socket or device: never
    opened, as opening a FIFO blocks) or ``EMPTY`` for such a file, else
    None (one ``stat``; the file is not opened)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return MISSING
    if not stat.S_ISREG(status.st_mode):
        return NOT_REGULAR
    if status.st_size == 0:
        return EMPTY
    return None


def walk_files(folder, stop=()):
    """Every file under ``folder``, sorted, following symbolic links to
    folders, but each real folder once, never ``folder`` or one above it,
    never one of ``stop`` or above it, nor inside a ``stop`` that does
    not hold ``folder``: a link loop, a link to ``.``, to a parent or to
    another class is listed, not walked.

    Args:
        folder (str): where to start.
        stop (iterable): folders not to walk into (the data folder and the
            other classes of a training scan).

    Returns:
        tuple: ``(images, unlisted)``: paths of image files (not hidden,
        an image extension, a regular file), and ``(path, code)`` for the
        other files and the folders not walked (``HIDDEN``,
        ``NOT_IMAGE_NAME``, ``NOT_REGULAR``, ``LINKED_FOLDER``); paths are
        ``folder`` joined with the relative path.
    """
    start = os.path.realpath(folder)
    stop = [os.path.realpath(path) for path in stop] + [start]
    images_found, unlisted, seen = [], [], {start}
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(subdirs):
            path = os.path.join(directory, name)
            real = os.path.realpath(path)
            if is_hidden(name):
                unlisted.append((path, HIDDEN))
            elif real in seen or any(_crosses(real, s, start) for s in stop):
                unlisted.append((path, LINKED_FOLDER))
            else:
                seen.add(real)
                kept.append(name)
        subdirs[:] = kept
        for name in sorted(files):
            path = os.path.join(directory, name)
            problem = _unlisted_file_problem(path, name)
            if problem:
                unlisted.append((path, problem))
            else:
                images_found.append(path)
    return sorted(images_found), sorted(unlisted)


def _crosses(real, stop, start):
    """Whether walking into real path ``real`` from ``start`` reaches the
    folder ``stop``: ``real`` is it or above it, or (a ``stop`` that does
    not hold ``start``, another class) inside it."""
    return is_within(stop, real) or (is_within(real, stop) and
                                     not is_within(start, stop))


def is_within(path, parent):
    """Whether the real path ``path`` is the real path ``parent`` or
    inside it."""
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _unlisted_file_problem(path, name):
    """Why a scan does not list the file ``path`` (named ``name``), or
    None; a broken link is listed (and found missing when read)."""
    if is_hidden(name):
        return HIDDEN
    if not is_image_name(name):
        return NOT_IMAGE_NAME
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NOT_REGULAR
    except OSError:
        pass
    return None
