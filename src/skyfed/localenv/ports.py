"""Free TCP ports on 127.0.0.1: pick one, check one, remember what this run handed out."""

from __future__ import annotations

import socket
import threading

_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()  # ports given to a service in this process, not yet bound by it


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on `host:port` now.

    SO_REUSEADDR mirrors what servers do, so a port in TIME_WAIT counts as free while a
    port with a live listener does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pick_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` when it is free (a restart keeps its address), else a fresh free port."""
    with _LOCK:
        if preferred and preferred not in _HANDED_OUT and port_free(preferred, host):
            _HANDED_OUT.add(preferred)
            return preferred
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def release(*ports: int) -> None:
    """Forget ports handed out by `pick_port` once their service listens (or gave up)."""
    with _LOCK:
        for port in ports:
            _HANDED_OUT.discard(port)
