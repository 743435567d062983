"""Download pretrained Caffe weights and verify their SHA-1.

    python -m finetune.fetch alexnet [--dir pretrained]

The download goes to ``<dir>/<file>.part``; an interrupted run leaves it
there and the next run continues it with an HTTP ``Range`` request. Only a
file whose SHA-1 matches the table below is renamed to ``<dir>/<file>``; a
mismatching download is deleted. A file already present with the right
SHA-1 is not downloaded again.
"""
import argparse
import collections
import os
import sys

from finetune.sources.http import ProgressBar, TransferError, download_file, sha1_of_file
from finetune.common.cli import command
from finetune.common.errors import DownloadError

ModelFile = collections.namedtuple('ModelFile', 'url sha1 filename')

MODELS = {
    # BVLC AlexNet, the weights finetune imports (BVLC model license:
    # unrestricted use).
    'alexnet': ModelFile(
        'http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel',
        '9116a64c0fbe4459d18f4bb6b56d647b63920377',
        'bvlc_alexnet.caffemodel'),
    # CaffeNet fine-tuned on Flickr Style (Caffe's model zoo readme);
    # non-commercial use only.
    'flickr_style': ModelFile(
        'http://dl.caffe.berkeleyvision.org/finetune_flickr_style.caffemodel',
        'b61b5cef7d771b53b0c488e78d35ccadc073e9cf',
        'finetune_flickr_style.caffemodel'),
}

MAX_MODEL_BYTES = 1 << 30
# Failures that mean "the server could not be reached": worth a hint to
# download by hand rather than a bare error.
UNREACHABLE_REASONS = ('timeout', 'connection-error', 'truncated')


def fetch_model(name, directory='pretrained', url=None, *, timeout=60.0,
                retries=4, backoff=1.0, progress=True, log=print):
    """Download model ``name`` from :data:`MODELS` into ``directory``; return its path.

    Args:
        name (str): a key of :data:`MODELS`.
        directory (str): folder for the weights (created if missing).
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
    if name not in MODELS:
        raise DownloadError(f'unknown model {name!r}; known: {", ".join(sorted(MODELS))}')
    model = MODELS[name]
    url = url or model.url
    target = os.path.join(directory, model.filename)
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


def build_parser():
    """The command-line interface of ``python -m finetune.fetch``."""
    parser = argparse.ArgumentParser(
        prog='python -m finetune.fetch',
        description='Download pretrained Caffe weights, resumably, and verify their sha1.')
    parser.add_argument('model', choices=sorted(MODELS), help='which weights to download')
    parser.add_argument('--dir', default='pretrained', help='destination folder (default: pretrained)')
    parser.add_argument('--url', help='download from this URL instead (a mirror); sha1 is still checked')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds to connect and for each read (default: 60)')
    parser.add_argument('--retries', type=int, default=4,
                        help='retries after network errors, each resuming (default: 4)')
    parser.add_argument('--no-progress', action='store_true', help='do not draw a progress bar')
    return parser


@command
def main(argv=None):
    """Run the CLI; return 0, or exit with status 2 and a one-line error on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    fetch_model(args.model, args.dir, args.url, timeout=args.timeout,
                retries=args.retries, progress=not args.no_progress)
    return 0


if __name__ == '__main__':
    sys.exit(main())
