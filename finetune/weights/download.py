"""Download pretrained Caffe weights and verify their SHA-1.

The registry (:mod:`finetune.weights.registry`) says where each model's
weights come from; ``<dir>`` is the cache's ``weights/`` folder
(:func:`finetune.weights.cache.weights_dir`) unless one is given. A
download goes to ``<dir>/<file>.part``; an
interrupted run leaves it there and the next run continues it with an HTTP
``Range`` request. Only a file whose SHA-1 matches the registry is renamed
to ``<dir>/<file>``; a mismatching download is deleted. A file already
present with the right SHA-1 is not downloaded again. A model shipped in a
PyPI package (``open_nsfw``) needs no download: its file is checked where
the package installed it.
"""
import os

from finetune.common.cli import non_negative_float
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_float
from finetune.common.cli import refusal
from finetune.common.errors import DownloadError
from finetune.weights.cache import weights_dir
from finetune.weights.registry import PretrainedModel
from finetune.weights.registry import REGISTRY
from finetune.weights.registry import pretrained_model
from finetune.sources.http import ProgressBar
from finetune.sources.http import TransferError
from finetune.sources.http import download_file
from finetune.common.fileio import sha1_of_file

MAX_MODEL_BYTES = 1 << 30
# Failures that mean "the server could not be reached": worth a hint to
# download by hand rather than a bare error.
UNREACHABLE_REASONS = ('timeout', 'connection-error', 'truncated')


def fetch_model(model, directory=None, url=None, *,
                timeout=60.0, retries=4, backoff=1.0, progress=True,
                log=print):
    """Download ``model``'s weights into ``directory``; return their path.

    Args:
        model (str or PretrainedModel): a registry name or entry.
        directory (str or None): folder for the weights (created if
            missing); default the cache's ``weights/``.
        url (str or None): download from this URL instead of the table's
            (a mirror); the SHA-1 is still checked.
        timeout (float): seconds allowed to connect and for each read.
        retries (int): extra attempts after a network error or 5xx answer;
            each continues the partial file.
        backoff (float): seconds before the first retry, doubled each time.
        progress (bool): draw a tqdm bar on stderr.
        log (callable): receives one-line status messages.

    Raises:
        DownloadError: unknown name, unreachable server, HTTP error or
            SHA-1 mismatch (the bad download is deleted).
    """
    for option_name, value, values in (('timeout', timeout, positive_float),
                                       ('retries', retries, non_negative_int),
                                       ('backoff', backoff,
                                        non_negative_float)):
        what = values.problem(value)
        if what:
            raise DownloadError(refusal('--' + option_name, value, what))
    if not isinstance(model, PretrainedModel):
        model = pretrained_model(model)
    name = model.name
    if model.package is not None:
        return _check_package_file(model, log)
    url = url or model.url
    target = os.path.join(directory or weights_dir(), model.filename)
    partial = target + '.part'
    if os.path.exists(target):
        digest = sha1_of_file(target)
        if digest == model.sha1:
            log(f'{target} is already present with the right sha1')
            return target
        os.remove(target)
        log(f'{target} had sha1 {digest}, expected {model.sha1}: removed it, downloading again')
    if not (os.path.exists(partial) and sha1_of_file(partial) == model.sha1):
        _download_partial(name, url, target, partial, timeout, retries, backoff, progress)
    digest = sha1_of_file(partial)
    if digest != model.sha1:
        os.remove(partial)
        raise DownloadError(f'{url}: downloaded file has sha1 {digest}, expected '
                            f'{model.sha1}; deleted it, re-run to download again')
    os.replace(partial, target)
    log(f'saved {target} (sha1 verified)')
    return target


def _download_partial(name, url, target, partial, timeout, retries, backoff, progress):
    """Download or continue ``partial`` from ``url``; raise a one-line DownloadError."""
    bar = ProgressBar(os.path.basename(target), enabled=progress)
    try:
        download_file(url, partial, resume=True, timeout=timeout, retries=retries,
                      backoff=backoff, max_bytes=MAX_MODEL_BYTES, progress=bar)
    except TransferError as error:
        if error.reason in UNREACHABLE_REASONS or (error.status or 0) >= 500:
            raise DownloadError(
                f'cannot download {url} ({error.reason}): re-run when online (a partial '
                f'download resumes), or download that URL by hand on a connected machine, '
                f'place it at {target} and run "python -m finetune.fetch {name} --dir '
                f'{os.path.dirname(target) or "."}" to verify it') from None
        raise DownloadError(str(error)) from None
    finally:
        bar.close()


def _check_package_file(model, log):
    """The path of a model shipped in a package, SHA-1 checked."""
    path = model.local_path()
    if not os.path.isfile(path):
        raise DownloadError('%s: missing from the installed package; '
                            'reinstall it: pip install --force-reinstall %s'
                            % (path, model.package))
    digest = sha1_of_file(path)
    if digest != model.sha1:
        raise DownloadError('%s: sha1 %s, expected %s; reinstall: pip '
                            'install --force-reinstall %s'
                            % (path, digest, model.sha1, model.package))
    log(f'{path} ships in {model.package} (sha1 verified)')
    return path


def describe_registry():
    """One line per registry entry: name, source, licence."""
    lines = []
    for entry in REGISTRY.values():
        where = entry.package or entry.url
        lines.append('%-13s %s  (%s)' % (entry.name, where, entry.licence))
    return '\n'.join(lines)
