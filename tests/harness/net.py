"""Tiny HTTP probes (TCP and unix socket) that need no docker SDK."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Mapping, Optional


class _UnixConnection(http.client.HTTPConnection):
    """An HTTPConnection over a unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _status(conn: http.client.HTTPConnection, method: str, path: str,
            headers: Optional[Mapping[str, str]]) -> Optional[int]:
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def unix_status(sock: Path, path: str = "/_ping", timeout: float = 2.0) -> Optional[int]:
    """HTTP status of GET ``path`` on unix socket ``sock``; None if unreachable."""
    return _status(_UnixConnection(sock, timeout), "GET", path, None)


def tcp_status(addr: str, path: str, method: str = "GET",
               headers: Optional[Mapping[str, str]] = None,
               timeout: float = 2.0) -> Optional[int]:
    """HTTP status of ``method path`` on ``addr`` (host:port); None if unreachable."""
    host, port = addr.rsplit(":", 1)
    return _status(http.client.HTTPConnection(host, int(port), timeout=timeout),
                   method, path, headers)


def port_open(addr: str, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``addr`` (host:port)."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False
