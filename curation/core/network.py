"""Whether a cluster's address answers, checked before a distributor would hang or fail on it deep inside."""

from __future__ import annotations

import socket

CONNECT_SECONDS = 5.0  # how long an address may take to accept a connection before it counts as not answering


def no_answer(address: str, seconds: float = CONNECT_SECONDS) -> str | None:
    """None when HOST:PORT (an IPv6 host in brackets) accepts a TCP connection within ``seconds``, else why not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return "not HOST:PORT"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__
