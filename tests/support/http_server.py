"""A local HTTP server for download tests: a thread on 127.0.0.1, port 0.

    with LocalHTTPServer() as server:
        server.route('/a.jpg', Response(status=500), Response(body=jpeg))
        url = server.url('/a.jpg')

Each route answers its n-th request with its n-th :class:`Response` (the last
one repeats), so "fail twice, then succeed" is three responses. Every request
is recorded in ``server.requests`` as ``(path, headers)``.
"""
import dataclasses
import http.server
import re
import threading


@dataclasses.dataclass
class Response:
    """One canned answer.

    Attributes:
        body (bytes): the full body.
        status (int): HTTP status for a non-Range answer.
        content_type (str): the Content-Type header.
        delay (float): seconds to wait before answering.
        truncate_at (int or None): announce the full Content-Length but
            close the connection after this many body bytes.
        honor_range (bool): answer ``Range: bytes=N-`` with 206 (or 416).
        headers (dict): extra headers.
        trickle (tuple or None): ``(n_bytes, seconds)``: send the body
            ``n_bytes`` at a time, ``seconds`` apart (a slow host).
    """
    body: bytes = b''
    status: int = 200
    content_type: str = 'application/octet-stream'
    delay: float = 0.0
    truncate_at: int = None
    honor_range: bool = True
    headers: dict = dataclasses.field(default_factory=dict)
    trickle: tuple = None


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 with configurable routes."""

    def __init__(self):
        self.routes = {}
        self.hits = {}
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={'poll_interval': 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def url(self, path):
        """The full URL of ``path`` on this server."""
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def route(self, path, *responses):
        """Serve ``responses`` in turn at ``path`` (the last one repeats)."""
        with self.lock:
            self.routes[path] = list(responses) or [Response()]
            self.hits[path] = 0

    def requests_for(self, path):
        """Headers (dicts, lower-case names) of the requests for ``path``, in order."""
        with self.lock:
            return [headers for got, headers in self.requests if got == path]

    def _next_response(self, path, headers):
        with self.lock:
            self.requests.append((path, headers))
            if path not in self.routes:
                return Response(b'not found', 404, 'text/plain')
            count = self.hits[path]
            self.hits[path] = count + 1
            responses = self.routes[path]
            return responses[min(count, len(responses) - 1)]


def _handler_for(server):
    """A request handler class bound to ``server``'s routes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            response = server._next_response(
                self.path, {name.lower(): value for name, value in self.headers.items()})
            if response.delay and server.stopping.wait(response.delay):
                return
            status, body, extra = response.status, response.body, {}
            match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range', ''))
            if match and response.honor_range and status == 200:
                start = int(match.group(1))
                if start >= len(body):
                    status, body = 416, b''
                    extra['Content-Range'] = f'bytes */{len(response.body)}'
                else:
                    status, body = 206, body[start:]
                    extra['Content-Range'] = f'bytes {start}-{len(response.body) - 1}/{len(response.body)}'
            try:
                self.send_response(status)
                self.send_header('Content-Type', response.content_type)
                self.send_header('Content-Length', str(len(body)))
                for name, value in {**extra, **response.headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                if response.truncate_at is not None:
                    body = body[:response.truncate_at]
                    self.close_connection = True
                if response.trickle:
                    size, pause = response.trickle
                    for start in range(0, len(body), size):
                        if server.stopping.wait(pause):
                            return
                        self.wfile.write(body[start:start + size])
                        self.wfile.flush()
                else:
                    self.wfile.write(body)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format, *args):
            """Keep test output quiet."""

    return Handler
