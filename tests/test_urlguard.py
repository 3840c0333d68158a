"""The URL guard's address classes, against a hand-written table of IP literals; no DNS, no network.

The verdicts are the documented policy (pipeline/kernels/urlguard.py, README "The URL guard") written out
by hand: loopback, unspecified, private, link-local, multicast, reserved, cloud-metadata and
other non-global addresses are refused, public ones allowed. The refusal's class is pinned, not
only "refused": the classes overlap (Python calls 169.254/16 private too, and anything not
global falls to "non-public"), so a table of refused/allowed alone would not notice one class
check going missing.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from pipeline.kernels.urlguard import GuardPolicy, address_kind

LOOPBACK = "loopback"
UNSPECIFIED = "unspecified"
PRIVATE = "private"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
RESERVED = "reserved"
METADATA = "cloud metadata"
NON_PUBLIC = "non-public (special-purpose)"
SITE_LOCAL = "site-local"
ALLOWED = None

# (IP literal, the guard's verdict: the class it is refused as, or None when it may be fetched)
ADDRESSES = [
    # loopback: 127.0.0.0/8 and ::1
    ("127.0.0.1", LOOPBACK),
    ("127.255.255.254", LOOPBACK),
    ("127.10.20.30", LOOPBACK),
    ("::1", LOOPBACK),
    # unspecified
    ("0.0.0.0", UNSPECIFIED),
    ("::", UNSPECIFIED),
    # private: 10/8, 172.16/12 (172.16.0.0-172.31.255.255 only), 192.168/16
    ("10.0.0.1", PRIVATE),
    ("10.255.255.255", PRIVATE),
    ("172.16.0.1", PRIVATE),
    ("172.20.10.5", PRIVATE),
    ("172.31.255.255", PRIVATE),
    ("172.15.255.255", ALLOWED),
    ("172.32.0.1", ALLOWED),
    ("192.168.0.1", PRIVATE),
    ("192.168.255.255", PRIVATE),
    ("192.167.255.255", ALLOWED),
    ("192.169.0.1", ALLOWED),
    # link-local: 169.254/16 and fe80::/10
    ("169.254.0.1", LINK_LOCAL),
    ("169.254.10.10", LINK_LOCAL),
    ("169.254.255.255", LINK_LOCAL),
    ("169.253.255.255", ALLOWED),
    ("169.255.0.1", ALLOWED),
    ("fe80::1", LINK_LOCAL),
    ("febf:ffff::1", LINK_LOCAL),
    # cloud metadata, ahead of the class the address is otherwise in
    ("169.254.169.254", METADATA),
    ("169.254.170.2", METADATA),
    ("fd00:ec2::254", METADATA),
    ("100.100.100.200", METADATA),
    ("192.0.0.192", METADATA),
    # carrier-grade NAT 100.64/10: not global, not private
    ("100.64.0.1", NON_PUBLIC),
    ("100.127.255.255", NON_PUBLIC),
    ("100.63.255.255", ALLOWED),
    ("100.128.0.1", ALLOWED),
    # IPv6 unique-local fc00::/7
    ("fc00::1", PRIVATE),
    ("fd12:3456:789a::1", PRIVATE),
    # IPv4-mapped IPv6: judged by the IPv4 address
    ("::ffff:10.0.0.1", PRIVATE),
    ("::ffff:127.0.0.1", LOOPBACK),
    ("::ffff:169.254.169.254", METADATA),
    ("::ffff:169.254.1.1", LINK_LOCAL),
    ("::ffff:8.8.8.8", ALLOWED),
    # 6to4 2002::/16 (global to Python): judged by the IPv4 address in bits 16-47
    ("2002:a00:1::", PRIVATE),
    ("2002:c0a8:101::1", PRIVATE),
    ("2002:7f00:1::", LOOPBACK),
    ("2002:a9fe:a9fe::", METADATA),
    ("2002:808:808::1", ALLOWED),
    # IPv6 site-local fec0::/10 (deprecated, global to Python)
    ("fec0::1", SITE_LOCAL),
    ("feff::1", SITE_LOCAL),
    # multicast and reserved
    ("224.0.0.1", MULTICAST),
    ("239.255.255.250", MULTICAST),
    ("ff02::1", MULTICAST),
    ("240.0.0.1", RESERVED),
    ("255.255.255.255", RESERVED),
    # public
    ("8.8.8.8", ALLOWED),
    ("1.1.1.1", ALLOWED),
    ("93.184.215.14", ALLOWED),
    ("223.255.255.1", ALLOWED),
    ("2606:4700::1111", ALLOWED),
    ("2001:4860:4860::8888", ALLOWED),
]

# Other spellings of IPv4 addresses that getaddrinfo (inet_aton) reads as numbers:
# (host as written in a URL, the address it stands for, verdict)
SPELLINGS = [
    ("2130706433", "127.0.0.1", LOOPBACK),  # one decimal number
    ("0x7f000001", "127.0.0.1", LOOPBACK),  # one hex number
    ("017700000001", "127.0.0.1", LOOPBACK),  # one octal number
    ("0177.0.0.1", "127.0.0.1", LOOPBACK),  # octal first part
    ("127.1", "127.0.0.1", LOOPBACK),  # two parts
    ("10.1", "10.0.0.1", PRIVATE),
    ("3232235521", "192.168.0.1", PRIVATE),
    ("0xac.0x10.0.1", "172.16.0.1", PRIVATE),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", METADATA),
    ("2852039166", "169.254.169.254", METADATA),
    ("0", "0.0.0.0", UNSPECIFIED),
    ("134744072", "8.8.8.8", ALLOWED),
]

METADATA_NAMES = ["metadata.google.internal", "metadata.google.internal.", "METADATA.Google.Internal", "metadata"]


@pytest.fixture(autouse=True)
def numeric_lookups_only(monkeypatch):
    """getaddrinfo reads numbers only (AI_NUMERICHOST): a name reaching it fails instead of asking DNS."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def numeric(host, port, family=0, type=0, proto=0, flags=0):
        asked.append(host)
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", numeric)
    return asked


def url_for(host: str) -> str:
    return f"http://[{host}]/a.jpg" if ":" in host else f"http://{host}/a.jpg"


def assert_verdict(why: str | None, host: str, verdict: str | None, address: str) -> None:
    """check_url's answer for `host` (which stands for `address`): None, or refused as `verdict`."""
    if verdict is None:
        assert why is None
        return
    prefix = f"host {host!r} resolves to a {verdict} address ("
    assert why is not None and why.startswith(prefix) and why.endswith(")"), why
    # Python may write the address another way (::ffff:a00:1 for ::ffff:10.0.0.1)
    assert ipaddress.ip_address(why[len(prefix) : -1]) == ipaddress.ip_address(address), why


@pytest.mark.parametrize("address, verdict", ADDRESSES)
def test_address_class(address, verdict):
    addr = ipaddress.ip_address(address)
    assert address_kind(addr) == verdict
    assert GuardPolicy().address_refusal(addr) == verdict


@pytest.mark.parametrize("address, verdict", ADDRESSES)
def test_url_with_an_address_literal(address, verdict, numeric_lookups_only):
    assert_verdict(GuardPolicy().check_url(url_for(address)), address, verdict, address)
    assert numeric_lookups_only == [address]


@pytest.mark.parametrize("host, address, verdict", SPELLINGS)
def test_url_with_another_spelling_of_an_ipv4_address(host, address, verdict):
    assert_verdict(GuardPolicy().check_url(url_for(host)), host, verdict, address)


@pytest.mark.parametrize("host", METADATA_NAMES)
def test_metadata_names_are_refused_before_any_lookup(host, numeric_lookups_only):
    why = GuardPolicy().check_url(f"http://{host}/computeMetadata/v1/")
    assert why is not None and why.endswith("is a cloud metadata name"), why
    assert numeric_lookups_only == []
    # switching the address checks off does not lift it
    assert GuardPolicy(allow_private=True).check_url(f"http://{host}/") is not None


@pytest.mark.parametrize("address, verdict", ADDRESSES)
def test_allowing_loopback_allows_127_0_0_1_and_nothing_else(address, verdict):
    """The tests' own policy (allow exactly 127.0.0.1) lifts that one address, no other."""
    policy = GuardPolicy(allow=("127.0.0.1",))
    expected = None if address == "127.0.0.1" else verdict
    assert policy.address_refusal(ipaddress.ip_address(address)) == expected
    assert_verdict(policy.check_url(url_for(address)), address, expected, address)


@pytest.mark.parametrize("host, address, verdict", SPELLINGS)
def test_allowing_loopback_judges_other_spellings_by_their_address(host, address, verdict):
    expected = None if address == "127.0.0.1" else verdict
    assert_verdict(GuardPolicy(allow=("127.0.0.1",)).check_url(url_for(host)), host, expected, address)


@pytest.mark.parametrize("address, verdict", ADDRESSES)
def test_allow_private_keeps_refusing_metadata_addresses(address, verdict):
    expected = METADATA if verdict == METADATA else None
    assert GuardPolicy(allow_private=True).address_refusal(ipaddress.ip_address(address)) == expected


def test_a_name_is_refused_when_any_of_its_addresses_is(monkeypatch):
    """A name with a public and a private address is refused; the lookup is a canned answer, not DNS."""
    answers = {
        "mixed.test": ["8.8.8.8", "10.0.0.7"],
        "mixed6.test": ["2606:4700::1111", "fe80::7"],
        "public.test": ["8.8.8.8", "2606:4700::1111"],
    }

    def canned(host, port, family=0, type=0, proto=0, flags=0):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", canned)
    assert GuardPolicy().check_url("http://mixed.test/a.jpg") == "host 'mixed.test' resolves to a private address (10.0.0.7)"
    assert GuardPolicy().check_url("http://mixed6.test/a.jpg") == "host 'mixed6.test' resolves to a link-local address (fe80::7)"
    assert GuardPolicy().check_url("http://public.test/a.jpg") is None
