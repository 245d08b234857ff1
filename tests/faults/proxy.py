"""A TCP proxy between the runner and PostgreSQL that fails on demand (after psycopg's
`tests/fix_proxy.py`). Modes:

- `blackhole()`: connections stay open but nothing is forwarded any more (a hung peer, a
  silent middlebox). New connections are accepted and then ignored too.
- `reset()`: every open connection is closed with a TCP RST (a crashed proxy or host).
- `stop_accepting()`: the listening socket is closed: new connections are refused.
- `restore()`: forward normally again (listening again if it had stopped).

Everything runs in daemon threads; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator

import pytest


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.blackholed = threading.Event()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.accepted = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        self._closed = True
        self.stop_accepting()
        self.reset()

    def url_for(self, url: str) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(url).set(host=self.host, port=self.port).render_as_string(hide_password=False)
        )

    # -- faults --------------------------------------------------------------------------

    def blackhole(self) -> None:
        self.blackholed.set()

    def reset(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    sock.close()

    def stop_accepting(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and
            # one more connection would still get through.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()

    def restore(self) -> None:
        self.blackholed.clear()
        if self._listener is None and not self._closed:
            self.start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- plumbing ------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.blackholed.is_set():
                # Accept and say nothing, like a peer behind a dead link.
                with self._lock:
                    self._pairs.append((client, client))
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while True:
                if self.blackholed.is_set():
                    # Stop reading: bytes stay unanswered, nothing is closed.
                    self.blackholed.wait(0.1)
                    if self._dead(client, server):
                        return
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return self._drop(client, server)
                    if self.blackholed.is_set():
                        break  # swallow it: the link died while this was in flight
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            self._drop(client, server)

    def _dead(self, client: socket.socket, server: socket.socket) -> bool:
        with self._lock:
            return (client, server) not in self._pairs

    def _drop(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            if (client, server) in self._pairs:
                self._pairs.remove((client, server))
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.close()


def proxy_for(url: str) -> FaultProxy:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return FaultProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()


@pytest.fixture(name="tcp_pg_url")
def tcp_pg_url_fixture(pg_url: str) -> str:
    """`pg_url`, which must be a TCP server for a proxy to stand in front of it."""
    from sqlalchemy.engine import make_url

    from tests.support import CI, TCP_POSTGRES_HINT, enable_hint

    parsed = make_url(pg_url)
    if not parsed.host or parsed.host.startswith("/") or "host" in parsed.query:
        if CI:
            pytest.fail("CI must run the proxy tests: MIGRATION_TEST_POSTGRES_URL must be TCP")
        pytest.skip("the proxy tests need PostgreSQL over TCP" + enable_hint(TCP_POSTGRES_HINT))
    return pg_url


@pytest.fixture(name="proxy")
def proxy_fixture(tcp_pg_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of this test's database: `proxy.url_for(tcp_pg_url)`."""
    p = proxy_for(tcp_pg_url)
    try:
        yield p
    finally:
        p.close()
