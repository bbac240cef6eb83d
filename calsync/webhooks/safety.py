"""Which webhook URLs calsync calls: https to public addresses only, unless allowed for development.

A subscriber could point calsync at its own network (loopback admin ports, the cloud metadata
service). The host is resolved, every address checked, and the connection is then made to the very
address that was checked, so a DNS answer that changes between check and connect (rebinding)
cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import idna

from calsync.config import Settings
from calsync.errors import InvalidSubscription, UnsafeURLError

MAX_URL_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

# Instance metadata services: link-local or unique-local already, named so the error says why.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack …
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)


@dataclass(frozen=True)
class Target:
    """A URL whose host has been resolved and checked; connect to `addresses`, present `host`."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: object, settings: Settings, *, max_length: int | None = MAX_URL_LENGTH) -> SplitResult:
    """The URL's parts if its form is acceptable (scheme, host, no credentials); no DNS here."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidSubscription("url", "url: a URL string is required")
    url = url.strip()
    if max_length is not None and len(url) > max_length:
        raise InvalidSubscription("url", f"url: longer than {max_length} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise InvalidSubscription("url", f"url: not a valid URL ({err})") from err
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidSubscription("url", "url: must be an absolute http(s) URL")
    if parts.scheme == "http" and not settings.webhook_allow_http:
        raise UnsafeURLError("url: only https URLs are allowed (set CALSYNC_WEBHOOK_ALLOW_HTTP=1 for development)")
    if parts.username is not None or parts.password is not None:
        raise InvalidSubscription("url", "url: credentials in the URL are not supported")
    if "%" in parts.hostname:
        raise UnsafeURLError("url: IPv6 zone identifiers are not allowed")
    if port == 0:
        raise InvalidSubscription("url", "url: port 0 is not a valid port")
    ascii_host(parts.hostname)
    return parts


# The characters IDNA 2003 maps away and IDNA 2008 keeps (ß, final sigma, the zero-width joiners):
# the names whose two forms are two different domains.
IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")


def ascii_host(host: str) -> str:
    """The host as DNS, TLS and the Host header take it: an internationalised name in its IDNA form
    (`bücher.example` → `xn--bcher-kva.example`). Sent as typed, it failed in the HTTP client.

    IDNA 2008 with UTS 46 mapping, as browsers and registries have it: Python's own codec is IDNA
    2003, which sends `faß.de` to `fass.de` (another registrable domain, whose owner could answer
    the challenge and receive the calendar data) and drops a zero-width joiner from a name."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as err:
        if any(ch in IDNA_DEVIATIONS for ch in host):
            raise InvalidSubscription("url", f"url: {host!r} is not a valid host name ({err})") from err
    # A name IDNA 2008 refuses but browsers take (an emoji, an underscore): where the two standards
    # differ only in what they allow, not in how they map, the 2003 form is the same name.
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise InvalidSubscription("url", f"url: {host!r} is not a valid host name ({err})") from err


def resolve_target(
    url: str, settings: Settings, *, resolver: Resolver = socket.getaddrinfo, max_length: int | None = MAX_URL_LENGTH
) -> Target:
    """Check the URL, resolve its host and refuse non-public addresses (unless allowed)."""
    parts = check_url(url, settings, max_length=max_length)
    host = ascii_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UnsafeURLError(f"url: cannot resolve host {host!r} ({err})") from err
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UnsafeURLError(f"url: host {host!r} has no address")
    if not settings.webhook_allow_private:
        for ip in addresses:
            reason = non_public_reason(ip)
            if reason:
                raise UnsafeURLError(
                    f"url: host {host!r} resolves to {ip}, a {reason} address "
                    "(set CALSYNC_WEBHOOK_ALLOW_PRIVATE=1 for development)"
                )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        url=url.strip(),
        scheme=parts.scheme,
        host=host,
        port=port,
        path=path,
        addresses=tuple(str(ip) for ip in addresses),
    )


def non_public_reason(ip: IPAddress) -> str | None:
    """Why an address must not be called ('loopback', 'private' …), or None when it is public.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64's well-known prefix)
    reaches that IPv4 address, so it is judged by it. The IPv6 ranges are named here rather than
    left to `ipaddress`, whose verdicts differ between Python versions (site-local `fec0::/10` is
    neither private nor reserved to it).
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return non_public_reason(embedded)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv6Address):
        for network, reason in _IPV6_RANGES:
            if ip in network:
                return reason
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to through a translator or tunnel, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# NAT64's well-known prefix (RFC 6052): DNS64 answers a public host with it on IPv6-only networks.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV6_RANGES = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("fc00::/7", "unique-local"),
        ("fec0::/10", "site-local"),  # deprecated (RFC 3879), still routed inside some networks
        ("64:ff9b:1::/48", "private"),  # NAT64 for local use (RFC 8215)
        ("2001:db8::/32", "reserved"),  # documentation
        ("3fff::/20", "reserved"),  # documentation (RFC 9637)
        ("5f00::/16", "reserved"),  # segment routing (RFC 9602)
        ("100::/64", "reserved"),  # discard-only
    )
)
