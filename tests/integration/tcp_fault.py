"""A TCP proxy on a loopback port that can take the service behind it away, as outages do.

``forward``: bytes pass both ways. ``refuse``: nothing listens (connections are refused) and
open connections are closed, as when the service is stopped. ``blackhole``: connections are
accepted and bytes are read but nothing ever comes back, as with a hung host or a dropped route.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["forward", "refuse", "blackhole"]


class FaultProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Mode = "forward"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listen()

    def set(self, mode: Mode) -> None:
        """Switch what the proxy does, for new and open connections alike."""
        with self._lock:
            self.mode = mode
            if mode == "refuse":
                self._close_all()
        if mode != "refuse" and self._listener is None:
            self._listen()

    def close(self) -> None:
        with self._lock:
            self.mode = "refuse"
            self._close_all()

    def _close_all(self) -> None:
        for s in [*self._conns, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._conns.clear()
        self._listener = None

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by refuse
                return
            with self._lock:
                self._conns.append(client)
                if self.mode == "blackhole":
                    upstream = None
                else:
                    upstream = socket.create_connection(self.target)
                    self._conns.append(upstream)
            if upstream is None:
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.mode == "forward":
                    dst.sendall(data)
                # blackhole: read and dropped, so the sender waits for an answer forever
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
