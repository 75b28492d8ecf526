"""A TCP proxy the tests control: forward, or blackhole (keep every connection open and drop
every byte, as a dead mobile link does, rather than refuse it); and, apart from that, refuse
new connections (stop listening, as a host whose broker is down) or admit them again."""

from __future__ import annotations

import socket
import threading

from operations.mosquitto import free_port


class BlackholeProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.forwarding = threading.Event()
        self.forwarding.set()
        # Held while a byte is being forwarded, so that partition() can wait for the last one.
        self._forward_lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.admit()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def partition(self) -> None:
        """Blackhole; on return no byte passes any more, not even one that was being forwarded."""
        self.forwarding.clear()
        with self._forward_lock:
            pass

    def heal(self) -> None:
        self.forwarding.set()

    def refuse(self) -> None:
        """Stop listening: a new connection is refused at once; those open are left as they are."""
        if self._server:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._server.close()
            self._server = None

    def admit(self) -> None:
        """Listen (again) on the same port."""
        if not self._server:
            self._server = socket.create_server(("127.0.0.1", self.port))
            self._sockets.append(self._server)
            threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
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
            with self._forward_lock:
                if not self.forwarding.is_set():
                    continue  # dropped on the floor
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
