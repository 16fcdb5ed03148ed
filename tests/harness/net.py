"""Tiny HTTP probes (TCP, TLS and unix socket) that need no docker SDK; network namespaces."""

from __future__ import annotations

import ctypes
import http.client
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar

NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


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
               timeout: float = 2.0, tls: Optional[ssl.SSLContext] = None) -> Optional[int]:
    """HTTP status of ``method path`` on ``addr`` (host:port); None if unreachable.

    With ``tls`` the request goes over HTTPS, verified by that context.
    """
    host, port = addr.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), timeout=timeout, context=tls) if tls
            else http.client.HTTPConnection(host, int(port), timeout=timeout))
    return _status(conn, method, path, headers)


def port_open(addr: str, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``addr`` (host:port)."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def in_netns(netns: str, action: Callable[[], T], timeout: float = 120.0) -> T:
    """Run ``action`` in network namespace ``netns`` and return its result (or raise its error).

    It runs in a thread of its own that joins the namespace (setns(2) moves
    only the calling thread) and then ends, so the rest of the process stays
    where it is. Sockets the action opens live in ``netns``; files, /etc/hosts
    and everything else are the caller's.
    """
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            with open(NETNS_DIR / netns, "rb") as fh:
                _setns(fh.fileno())
            outcome["value"] = action()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"action in netns {netns} still running after {timeout:.0f}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")
