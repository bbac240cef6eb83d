"""SSRF refusals: scheme, loopback/private/link-local/unique-local/metadata hosts, and DNS answers."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from typing import Any

import pytest

from calsync.config import Settings
from calsync.errors import InvalidSubscription, UnsafeURLError
from calsync.webhooks.safety import resolve_target
from calsync.webhooks.transport import exchange
from tests.webhooks.receiver import Receiver

STRICT = Settings(database_url="sqlite://")
OPEN = dataclasses.replace(STRICT, webhook_allow_http=True, webhook_allow_private=True)


def fake_dns(*answers: str) -> Any:
    """A resolver answering with these addresses, as getaddrinfo would."""

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers
        ]

    return resolve


def test_plain_http_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeURLError, match="only https"):
        resolve_target("http://hooks.example.com/x", STRICT, resolver=fake_dns("93.184.215.14"))
    target = resolve_target(
        "http://hooks.example.com/x",
        dataclasses.replace(STRICT, webhook_allow_http=True),
        resolver=fake_dns("93.184.215.14"),
    )
    assert target.scheme == "http" and target.port == 80


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://172.16.5.4/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://169.254.1.1/", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("https://[fd00:ec2::254]/", "cloud metadata"),
        ("https://[fd12:3456::1]/", "unique-local"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://100.64.0.1/", "reserved"),
        ("https://localhost/hook", "loopback"),
    ],
)
def test_non_public_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURLError, match=reason):
        resolve_target(url, STRICT)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("fec0::1", "site-local"),
        ("feff:ffff::1", "site-local"),
        ("fc00::5", "unique-local"),
        ("fdff::5", "unique-local"),
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:a00:1::1", "private"),  # 6to4 around 10.0.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo for client 10.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 to 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 to 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 to 169.254.169.254
        ("64:ff9b:1::a00:1", "private"),  # local-use NAT64
        ("2001:db8::1", "reserved"),
        ("3fff::1", "reserved"),
        ("ff02::1", "reserved"),
    ],
)
def test_ipv6_special_ranges_are_refused_as_literals_and_as_dns_answers(address: str, reason: str) -> None:
    with pytest.raises(UnsafeURLError, match=reason):
        resolve_target(f"https://[{address}]/hook", STRICT)
    shown = ipaddress.ip_address(address)
    with pytest.raises(UnsafeURLError, match=re.escape(f"resolves to {shown}, a {reason} address")):
        resolve_target("https://hooks.example.com/", STRICT, resolver=fake_dns("93.184.215.14", address))


@pytest.mark.parametrize(
    "address", ["64:ff9b::5db8:d70e", "::ffff:93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
)
def test_ipv6_addresses_leading_to_a_public_host_are_allowed(address: str) -> None:
    """DNS64 on an IPv6-only network answers a public host inside 64:ff9b::/96: that host is public."""
    target = resolve_target("https://hooks.example.com/", STRICT, resolver=fake_dns(address))
    assert target.addresses == (str(ipaddress.ip_address(address)),)


def test_a_name_resolving_to_a_private_address_is_refused_even_among_public_ones() -> None:
    with pytest.raises(UnsafeURLError, match=re.escape("resolves to 10.0.0.7, a private address")):
        resolve_target("https://hooks.example.com/", STRICT, resolver=fake_dns("93.184.215.14", "10.0.0.7"))


def test_the_connection_goes_to_the_addresses_that_were_checked() -> None:
    target = resolve_target(
        "https://hooks.example.com:8443/in?a=1",
        STRICT,
        resolver=fake_dns("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    )
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert target.host == "hooks.example.com" and target.host_header == "hooks.example.com:8443"
    assert target.path == "/in?a=1"


def test_private_addresses_are_allowed_for_development() -> None:
    target = resolve_target("http://127.0.0.1:9999/hook", OPEN)
    assert target.addresses == ("127.0.0.1",)


@pytest.mark.parametrize("url", ["ftp://example.com/", "not a url", "https://", "https://user:pw@example.com/", ""])
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidSubscription) as info:
        resolve_target(url, STRICT)
    assert info.value.field == "url"


def test_unresolvable_host_is_refused_with_a_clear_message() -> None:
    def fail(*_: Any, **__: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UnsafeURLError, match=re.escape("cannot resolve host 'nowhere.invalid'")):
        resolve_target("https://nowhere.invalid/", STRICT, resolver=fail)


def test_an_internationalised_host_is_called_by_its_idna_name(receiver: Receiver) -> None:
    """Sent as typed, a name beyond Latin-1 made the HTTP client raise UnicodeEncodeError: a 500 on
    subscribing, and an attempt that escaped its delivery (the rest of its batch abandoned)."""
    asked: list[str] = []

    def local(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    target = resolve_target(f"http://例え.bücher.test:{receiver.port}/hook", OPEN, resolver=local)
    assert asked == ["xn--r8jz45g.xn--bcher-kva.test"] and target.host == asked[0]
    answer = exchange(target, "POST", body=b"{}", timeout=5)
    assert answer.status == 200 and receiver.posts()[-1].headers["Host"] == f"{asked[0]}:{receiver.port}"
    with pytest.raises(InvalidSubscription) as refused:  # a label IDNA cannot encode (over 63 characters)
        resolve_target(f"https://{'ü' * 64}.example/", STRICT)
    assert refused.value.field == "url"


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("faß.de", "xn--fa-hia.de"),
        ("βόλος.gr", "xn--nxasmm1c.gr"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("☃.net", "xn--n3h.net"),  # IDNA 2008 refuses the symbol; browsers and IDNA 2003 take it, the same name
        ("bücher_x.example", "xn--bcher_x-n2a.example"),
    ],
)
def test_a_host_is_looked_up_by_its_idna_2008_name_as_browsers_do(host: str, name: str) -> None:
    """Python's codec is IDNA 2003: `faß.de` went to `fass.de`, another domain, whose owner could
    answer the challenge and then receive every message."""
    asked: list[str] = []

    def local(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    assert resolve_target(f"http://{host}/hook", OPEN, resolver=local).host == name and asked == [name]


def test_a_host_with_an_invisible_joiner_is_refused() -> None:
    """IDNA 2003 dropped it: `ab\u200dc.example` was looked up as `abc.example`."""
    with pytest.raises(InvalidSubscription):
        resolve_target("https://ab\u200dc.example/hook", STRICT)
