"""The client address of a console request, behind trusted reverse proxies or not.

The login throttle keeps one bucket per client address. Behind a reverse proxy every request
comes from the proxy's address, so every operator would share one bucket. With
``--console-trusted-proxy CIDR`` (repeatable, off by default) a request whose TCP peer is in
one of those networks is taken to come from the address the proxies recorded in
``X-Forwarded-For``: the right-most entry that is not itself a trusted proxy. Every proxy
appends the address it received the request from, so entries right of that one were written by
proxies we trust, and it is the one the nearest trusted proxy saw; entries further left are the
client's word and could be anything.

A trusted proxy's ``X-Forwarded-Proto`` is believed too (:func:`forwarded_scheme`): the
same-origin check of every POST compares the browser's ``Origin`` with the scheme the browser
used, which a proxy ending TLS in front of a plain-HTTP console knows and the console does not.

A request from any other peer is taken at its peer address and its ``X-Forwarded-*`` headers
are ignored, so a client cannot choose its bucket by sending the header. An entry that is not an IP
address where the client's should be (a proxy that writes ``unknown`` or host names) falls back
to the peer, the safe side: a shared bucket, never a chosen one.

uvicorn's own proxy-header handling (which trusts ``127.0.0.1`` by default) is turned off in
``serve``, so this module is the only place a forwarded address is believed.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDED_FOR = "x-forwarded-for"
FORWARDED_PROTO = "x-forwarded-proto"


def parse_network(text: str) -> Network:
    """``--console-trusted-proxy``'s value: a CIDR (``10.0.0.0/8``) or one address."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an address or a CIDR such as 10.0.0.0/8, 192.0.2.7 or fd00::/8"
        ) from None


def _address(text: str) -> Address | None:
    """An X-Forwarded-For entry or a peer as an address: ``192.0.2.1``, ``2001:db8::1``,
    also ``192.0.2.1:5678`` and ``[2001:db8::1]:5678`` as some proxies write them; an
    IPv4-mapped IPv6 address as its IPv4 one. None when it is none of these."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(peer: str, forwarded: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address to throttle and log a request by. ``peer`` is the TCP peer's address,
    ``forwarded`` every ``X-Forwarded-For`` header value in order (several headers read as one
    comma-separated list), ``trusted`` the ``--console-trusted-proxy`` networks."""
    peer_address = _address(peer)
    if not trusted or peer_address is None or not _trusted(peer_address, trusted):
        return peer
    entries = [e for value in forwarded for e in value.split(",") if e.strip()]
    if not entries:
        return peer
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return peer
        if not _trusted(address, trusted):
            return str(address)
    # Every entry is a trusted proxy: the farthest one is the nearest thing to a client.
    leftmost = _address(entries[0])
    return str(leftmost) if leftmost is not None else peer


def forwarded_scheme(peer: str, proto: str | None, trusted: Sequence[Network]) -> str | None:
    """``X-Forwarded-Proto`` (``http`` or ``https``) when a trusted proxy sent it, else None:
    a proxy that ends TLS in front of a plain-HTTP console says the browser's scheme, which the
    same-origin check compares the ``Origin`` header with."""
    address = _address(peer)
    if proto is None or address is None or not trusted or not _trusted(address, trusted):
        return None
    scheme = proto.split(",")[-1].strip().lower()
    return scheme if scheme in ("http", "https") else None
