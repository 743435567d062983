"""The one HTTP download helper shared by ``finetune.fetch`` and ``finetune.gather``.

Every attempt has a socket timeout; connection errors, timeouts, truncated
bodies and 5xx answers are retried a bounded number of times with exponential
backoff, 4xx answers are not. The bytes read are capped (``max_bytes``).
Files are written under a temporary name and renamed when complete, or, with
``resume=True``, appended to a partial file that a later call continues with
an HTTP ``Range`` request. Only ``http`` and ``https`` URLs are fetched, and
redirects may not leave them.
"""
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from finetune.common.errors import DownloadError
from finetune.common.fileio import atomic_write

USER_AGENT = 'finetune-download/0.1 (+python urllib)'
CHUNK_BYTES = 1 << 16
ALLOWED_SCHEMES = ('http', 'https')


class TransferError(DownloadError):
    """One download failed.

    Attributes:
        reason (str): short slug for reports: ``http-404``, ``timeout``,
            ``connection-error``, ``truncated``, ``too-large``, ``bad-url``,
            ``rejected``.
        retryable (bool): whether another attempt may succeed.
        status (int or None): the HTTP status, when the server answered.
    """

    def __init__(self, message, reason, retryable, status=None):
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.status = status


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs (never file:, ftp:, data:)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ALLOWED_SCHEMES:
            raise urllib.error.HTTPError(
                newurl, code, 'redirect to a non-HTTP URL', headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def check_url(url):
    """Raise a non-retryable :class:`TransferError` unless ``url`` is http(s) with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.netloc:
        raise TransferError(f'{url!r}: not an http(s) URL', 'bad-url', False)


def _network_error(url, error):
    """Translate a socket/urllib exception into a retryable :class:`TransferError`."""
    cause = getattr(error, 'reason', error)
    if isinstance(error, TimeoutError) or isinstance(cause, TimeoutError):
        return TransferError(f'{url}: timed out', 'timeout', True)
    return TransferError(f'{url}: {cause or type(error).__name__}',
                         'connection-error', True)


def _open(url, timeout, headers=None):
    """Send one GET; return the open response or raise :class:`TransferError`.

    ``timeout`` is in seconds and applies to connecting and to every read.
    """
    check_url(url)
    request = urllib.request.Request(
        url, headers={'User-Agent': USER_AGENT, **(headers or {})})
    opener = urllib.request.build_opener(_HTTPOnlyRedirects)
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        raise TransferError(f'{url}: HTTP {error.code} {error.reason}',
                            f'http-{error.code}', error.code >= 500,
                            error.code) from None
    except (OSError, http.client.HTTPException) as error:
        raise _network_error(url, error) from None


def _content_length(response):
    """The response's Content-Length in bytes, or None when absent or invalid."""
    value = response.headers.get('Content-Length', '').strip()
    return int(value) if value.isdigit() else None


def _copy_body(url, response, write, offset, max_bytes, progress,
               deadline=None):
    """Stream the body into ``write``; return the number of bytes copied.

    ``offset`` is how many bytes of the file precede this body (resume);
    ``max_bytes`` caps ``offset`` plus the body. ``progress(done, total)`` is
    called with byte counts of the whole file (``total`` None if unknown).
    A body shorter than its Content-Length raises a retryable ``truncated``;
    ``deadline`` (a ``time.monotonic()`` value) passed while reading
    raises ``deadline`` (a host trickling bytes never times out a read).
    """
    expected = _content_length(response)
    total = None if expected is None else offset + expected
    if max_bytes is not None and total is not None and total > max_bytes:
        raise TransferError(f'{url}: {total} bytes is over the {max_bytes}-byte cap',
                            'too-large', False)
    copied = 0
    while True:
        try:
            # read1: what has arrived, so a trickle returns between reads
            chunk = response.read1(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise _network_error(url, error) from None
        if not chunk:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TransferError(f'{url}: not downloaded within its deadline',
                                'deadline', False)
        copied += len(chunk)
        if max_bytes is not None and offset + copied > max_bytes:
            raise TransferError(f'{url}: more than the {max_bytes}-byte cap',
                                'too-large', False)
        write(chunk)
        if progress is not None:
            progress(offset + copied, total)
    if expected is not None and copied < expected:
        raise TransferError(f'{url}: connection closed after {copied} of '
                            f'{expected} bytes', 'truncated', True)
    return copied


def with_retries(attempt, retries, backoff, sleep=time.sleep):
    """Call ``attempt()`` until it succeeds, at most ``retries + 1`` times.

    Only retryable :class:`TransferError` s are retried, after sleeping
    ``backoff * 2**n`` seconds (n = 0, 1, ...); the last error is raised.
    """
    for number in range(max(retries, 0) + 1):
        try:
            return attempt()
        except TransferError as error:
            if not error.retryable or number == retries:
                raise
            sleep(backoff * 2 ** number)


def fetch_bytes(url, *, timeout=10.0, retries=2, backoff=0.5, max_bytes=None,
                check_headers=None, deadline=None):
    """Download ``url`` into memory; return ``(body, content_type)``.

    Args:
        timeout (float): seconds allowed to connect and for each read.
        retries (int): extra attempts after a retryable failure.
        backoff (float): seconds before the first retry, doubled each time.
        max_bytes (int or None): cap on the body size in bytes.
        check_headers (callable or None): called with the response headers
            before the body is read; it may raise a :class:`TransferError`.
        deadline (float or None): seconds for the whole download, retries
            included (``deadline`` reason when it passes).
    """
    end = None if deadline is None else time.monotonic() + deadline

    def attempt():
        with _open(url, timeout) as response:
            if check_headers is not None:
                check_headers(response.headers)
            parts = []
            _copy_body(url, response, parts.append, 0, max_bytes, None, end)
            return b''.join(parts), response.headers.get('Content-Type', '')
    return with_retries(attempt, retries, backoff)


def download_file(url, path, *, resume=False, timeout=30.0, retries=3,
                  backoff=1.0, max_bytes=None, progress=None):
    """Download ``url`` to ``path``; return the file's size in bytes.

    Without ``resume`` the body goes to a temporary file beside ``path`` that
    is renamed onto it when complete. With ``resume`` ``path`` is a partial
    file: data already in it is kept and continued with ``Range: bytes=N-``
    (restarted when the server answers 200 instead of 206, or 416), and data
    received before a failure stays in it for the next call. The caller
    renames a resumed file once it has verified it.

    Args:
        timeout (float): seconds allowed to connect and for each read.
        retries (int): extra attempts after a retryable failure.
        backoff (float): seconds before the first retry, doubled each time.
        max_bytes (int or None): cap on the file size in bytes.
        progress (callable or None): ``progress(done_bytes, total_bytes)``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)

    def attempt_fresh():
        with _open(url, timeout) as response, atomic_write(path) as tmp:
            with open(tmp, 'wb') as file:
                return _copy_body(url, response, file.write, 0, max_bytes, progress)

    def attempt_resume():
        offset = os.path.getsize(path) if os.path.exists(path) else 0
        try:
            response = _open(url, timeout,
                             {'Range': f'bytes={offset}-'} if offset else None)
        except TransferError as error:
            if not (offset and error.status == 416):
                raise
            offset, response = 0, _open(url, timeout)
        with response:
            if offset and not _resumes_at(response, offset):
                offset = 0
            with open(path, 'ab' if offset else 'wb') as file:
                return offset + _copy_body(url, response, file.write, offset,
                                           max_bytes, progress)

    return with_retries(attempt_resume if resume else attempt_fresh,
                        retries, backoff)


def _resumes_at(response, offset):
    """Whether ``response`` is a 206 whose Content-Range starts at ``offset`` bytes."""
    content_range = response.headers.get('Content-Range', '')
    return (response.status == 206
            and content_range.replace(' ', '').startswith(f'bytes{offset}-'))


class ProgressBar:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a tqdm bar.

    The bar is created on the first call, so a resumed download starts at
    the bytes already on disk. Call :meth:`close` when done.
    """

    def __init__(self, description, enabled=True):
        self.description = description
        self.enabled = enabled
        self.bar = None

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=self.description,
                            unit='B', unit_scale=True, unit_divisor=1024)
        else:
            self.bar.update(done - self.bar.n)

    def close(self):
        """Close the bar, if one was drawn."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
