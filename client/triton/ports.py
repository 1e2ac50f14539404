"""Free TCP ports for a server to bind: chosen by the OS, released before use (so a clash with
another process is still possible; ``server.start_server`` retries on one).
"""

from __future__ import annotations

import errno
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def taken_ports(host: str, ports: dict[str, int]) -> list[str]:
    """Which of ``ports`` (name -> port) cannot be bound on ``host`` right now, as
    ``"--grpc-port 8001 (Address already in use)"``. SO_REUSEADDR as servers use it: a port
    left in TIME_WAIT by a stopped server counts as free, one with a listener does not."""
    taken = []
    for name, port in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                why = "already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
                taken.append(f"--{name.replace('_', '-')} {port} on {host} ({why})")
    return taken


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all sockets held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()

