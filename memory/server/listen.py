"""The listening socket the servers are given (bound before uvicorn starts, so that a busy
port is an ordinary error rather than uvicorn's exit).

It is made with ``IPPROTO_TCP`` named explicitly. asyncio turns Nagle's algorithm off
(``TCP_NODELAY``) only on sockets whose ``proto`` says TCP, and a connection accepted from a
listener made with protocol 0 (``socket.create_server``) inherits 0: every response then waited
for the client's delayed ACK of its first segment, about 40 ms on Linux, so each back-to-back
request took 45-60 ms instead of 2-9 ms (one client, `channelmind bench load --clients 1`)."""

from __future__ import annotations

import socket

BACKLOG = 2048  # uvicorn's default


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``(host, port)`` (IPv6 when the host has a colon)
    and listening; raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
