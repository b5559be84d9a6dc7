"""A TCP proxy the tests can cut, as a network partition cuts a host off a server.

Workers get the proxy's address instead of the server's. ``cut()`` stops every byte in
both directions while the connections stay open, as a dropped route does: a statement
sent meanwhile gets no answer, and a new connection is accepted but hears nothing.
``mend()`` lets the bytes held meanwhile through, in order, as TCP's retransmissions
deliver them once a partition ends (so a late write arrives late, not never); ``sever()``
closes every connection instead, as the far end would after its timeouts.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; see the module text."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stopped = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def cut_off(self) -> bool:
        return not self._open.is_set()

    def cut(self) -> None:
        self._open.clear()

    def mend(self) -> None:
        self._open.set()

    def sever(self) -> None:
        """Close every connection now (and let new ones through)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
        self._open.set()

    def close(self) -> None:
        self._stopped = True
        self._open.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.sever()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait()  # a connection made during a cut hears nothing until it ends
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, server))
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                self._open.wait()
                try:
                    events = selector.select(timeout=0.2)
                except (OSError, ValueError):
                    return
                for key, _ in events:
                    if not self._relay(key.fileobj, peer[key.fileobj]):  # type: ignore[index]
                        for sock in peer:
                            with contextlib.suppress(OSError):
                                sock.close()
                        return

    def _relay(self, source: socket.socket, sink: socket.socket) -> bool:
        """Pass what ``source`` has to ``sink``, held while the proxy is cut."""
        try:
            data = source.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        self._open.wait()
        try:
            sink.sendall(data)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def proxied(target: tuple[str, int]) -> Iterator[Proxy]:
    proxy = Proxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
