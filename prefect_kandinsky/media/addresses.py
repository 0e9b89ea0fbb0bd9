"""Which network addresses a user-given URL may be fetched from, decided after DNS resolution.

An ``image_url`` comes from whoever can trigger a run, not from whoever runs the worker; the
worker fetches it (the image check) from inside its own network. So before a connection is
opened, the URL's host is resolved and every address it resolves to is judged:

- **always refused**: cloud metadata endpoints (``169.254.169.254``, ``fd00:ec2::254``, ...),
  link-local, multicast, reserved and unspecified addresses;
- **refused unless opted in**: loopback and private addresses (RFC 1918, unique local, shared
  address space); the opt-in is the caller's ``allow_private_images=True`` or the environment
  variable :data:`ALLOW_PRIVATE_IMAGES_ENV` set to ``1``/``true``/``yes``;
- **loopback allowed when the gateway is on loopback** (the emulator): offline runs fetch their
  images from the same machine;
- everything else (public addresses) is allowed.

The request then goes to the address that was checked, not to the name (the name is sent as
``Host`` and as the TLS server name, so certificates are still verified against it): a DNS
answer that changes between the check and the connection (DNS rebinding) cannot move the fetch.
A refused address is never connected to, so a refused host says nothing about what listens
there: a closed port, a 404 and an image all get the same refusal.

Example:
    ```python
    from prefect_kandinsky.media.addresses import AddressPolicy, pin

    policy = AddressPolicy.for_images(allow_private_images=None, gateway_url=None)
    pinned = await pin(httpx.URL("https://example.com/a.png"), policy)
    request = client.build_request("GET", pinned.url, headers=pinned.headers,
                                   extensions=pinned.extensions)
    ```
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import TypeAlias

import anyio
import httpx

ALLOW_PRIVATE_IMAGES_ENV = "KANDINSKY_ALLOW_PRIVATE_IMAGES"
"""Environment variable that, set to ``1``, ``true`` or ``yes``, lets the image check fetch
images from loopback and private addresses (never from metadata or link-local ones)."""
ALLOW_PRIVATE_IMAGES_PARAMETER = "allow_private_images"
"""The parameter of the image check with the same effect as :data:`ALLOW_PRIVATE_IMAGES_ENV`."""

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
"""Cloud instance metadata endpoints: never fetched, whatever the opt-in."""
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_TRUE = frozenset({"1", "true", "yes", "on"})

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The host of a URL resolves to an address the policy refuses; ``kind`` says which kind."""

    def __init__(self, host: str, kind: str, *, opt_in: bool) -> None:
        self.host = host
        self.kind = kind
        self.opt_in = opt_in
        super().__init__(f"{host} resolves to {kind}")


class AddressUnresolved(Exception):
    """The host of a URL has no address (DNS failed)."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which address kinds may be fetched.

    Attributes:
        allow_private: Loopback and private addresses are allowed (the opt-in).
        allow_loopback: Loopback addresses are allowed (the gateway itself is on loopback).
    """

    allow_private: bool = False
    allow_loopback: bool = False

    @classmethod
    def for_images(
        cls, *, allow_private_images: bool | None, gateway_url: str | None
    ) -> AddressPolicy:
        """The policy of the image check: the parameter, else the environment variable;
        loopback allowed when ``gateway_url`` is on loopback."""
        if allow_private_images is None:
            setting = os.environ.get(ALLOW_PRIVATE_IMAGES_ENV, "")
            allow_private_images = setting.strip().lower() in _TRUE
        return cls(
            allow_private=allow_private_images,
            allow_loopback=gateway_url is not None and is_loopback_url(gateway_url),
        )

    def refusal(self, address: IPAddress) -> tuple[str, bool] | None:
        """Why ``address`` is refused (its kind, and whether the opt-in would allow it), or None."""
        address = embedded_ipv4(address)
        if address in METADATA_ADDRESSES:
            return "a cloud metadata address", False
        if address.is_unspecified:
            return "an unspecified address", False
        if address.is_link_local:
            return "a link-local address", False
        if address.is_multicast:
            return "a multicast address", False
        if address.is_loopback:
            return (
                None if self.allow_private or self.allow_loopback else ("a loopback address", True)
            )
        if address.is_reserved:
            return "a reserved address", False
        if not address.is_global:
            return None if self.allow_private else ("a private address", True)
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo), judged in its place;
    else ``address`` itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return address


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is a loopback name or address (no DNS lookup is made)."""
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        return False
    if host.lower().rstrip(".") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class PinnedURL:
    """A URL rewritten to go to one checked address, with the name kept for ``Host`` and TLS."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, object]


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the address itself for an IP literal)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressUnresolved(host) from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AddressUnresolved(host)
    return addresses


async def pin(url: httpx.URL, policy: AddressPolicy) -> PinnedURL:
    """``url`` rewritten to its host's first address, once every address passed ``policy``.

    Raises:
        AddressRefused: One of the addresses is refused (all must pass: a name that resolves
            to a public and a private address is refused).
        AddressUnresolved: The host has no address.
    """
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve(host, port)
    for address in addresses:
        refused = policy.refusal(address)
        if refused is not None:
            kind, opt_in = refused
            raise AddressRefused(host, kind, opt_in=opt_in)
    chosen = addresses[0]
    if str(chosen) == host:
        return PinnedURL(url, {}, {})
    extensions: dict[str, object] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = host
    netloc = url.netloc.decode("ascii")
    return PinnedURL(url.copy_with(host=str(chosen)), {"Host": netloc}, extensions)
