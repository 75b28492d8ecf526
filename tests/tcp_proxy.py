"""A TCP proxy the tests control: forward, or blackhole (keep every connection open and drop
every byte, as a dead mobile link does, rather than refuse it)."""

from __future__ import annotations

import socket
import threading

from edge_node.broker import free_port


class BlackholeProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def partition(self) -> None:
        self.forwarding.clear()

    def heal(self) -> None:
        self.forwarding.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        while not self.forwarding.wait(0.1):  # a blackholed SYN-ACK'd connection: silence
            if self._stop.is_set():
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.forwarding.is_set():  # else dropped on the floor
                try:
                    dst.sendall(data)
                except OSError:
                    break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
