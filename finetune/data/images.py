"""Which files are images, and the one vocabulary of what is wrong with one.

Training's folder scan (``problems.csv``), ``gather``'s report and
``predict``'s ``error`` column all name an unusable image with one of the
:data:`PROBLEMS` codes below, optionally followed by ``': '`` and a detail
(PIL's message for ``undecodable``).
"""
import os

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
}


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


def open_decoded(path):
    """Open the image file ``path`` and decode it fully: a PIL image.

    Raises:
        Exception: whatever PIL raises (see :func:`problem_of_exception`).
    """
    image = Image.open(path)
    image.load()
    return image


def file_problem(path):
    """``MISSING`` or ``EMPTY`` for such a file, else None."""
    try:
        if os.path.getsize(path) == 0:
            return EMPTY
    except OSError:
        return MISSING
    return None


def walk_files(folder):
    """Every file under ``folder``, sorted, following symbolic links to
    folders (each real folder once, so a link loop ends).

    Returns:
        tuple: ``(images, unlisted)``: paths of image files (not hidden,
        an image extension), and ``(path, HIDDEN or NOT_IMAGE_NAME)`` for
        the other files; paths are ``folder`` joined with the relative path.
    """
    images_found, unlisted, seen = [], [], set()
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs.sort()
        for d in [d for d in subdirs if is_hidden(d)]:
            unlisted.append((os.path.join(directory, d), HIDDEN))
        subdirs[:] = [d for d in subdirs if not is_hidden(d)]
        for name in sorted(files):
            path = os.path.join(directory, name)
            if is_hidden(name):
                unlisted.append((path, HIDDEN))
            elif not is_image_name(name):
                unlisted.append((path, NOT_IMAGE_NAME))
            else:
                images_found.append(path)
    return sorted(images_found), sorted(unlisted)


def check_image(path, channels=3):
    """Why the image at ``path`` cannot be used, or ``None`` if it can.

    Opens and fully decodes the file (truncated files are errors), then
    converts it the way :class:`~finetune.data.transforms.CaffePreprocess`
    does.

    Returns:
        str or None: a code of :data:`PROBLEMS` (``undecodable`` with
        PIL's message after ``': '``).
    """
    from finetune.data.transforms import CaffePreprocess
    problem = file_problem(path)
    if problem:
        return problem
    try:
        with open_decoded(path) as img:
            CaffePreprocess(size=(4, 4), crop_size=None, mean=None,
                            channels=channels).image_array(img)
    except Exception as e:  # PIL raises many types for corrupt data
        return problem_of_exception(e)
    return None
