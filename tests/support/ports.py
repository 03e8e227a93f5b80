"""Free TCP ports on 127.0.0.1 for the servers tests and benchmarks start.

The kernel may hand out the same free port twice when it is asked twice before either is bound (a fixture
picking five ports for a stack, say); a port this process has already handed out is never given again.
"""

from __future__ import annotations

import socket

_given: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
