"""The SSRF address policy: every special-purpose range, IPv6 wrappings, numeric tricks."""

from __future__ import annotations

import ipaddress

import pytest

from webhooks.addresses import blocked_reason, literal_ip

BLOCKED = [
    # address, words the reason must contain
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("224.0.1.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "0.0.0.0/8"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.0.0.8", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "discard"),
    ("64:ff9b:1::1", "NAT64"),
    ("2001:2::1", "benchmarking"),
    ("5f00::1", "not a public"),
    # IPv6 forms that carry a blocked IPv4 address are judged as that address.
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, which is a loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped form of 10.1.2.3, which is a private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
    ("::10.0.0.1", "IPv4-compatible form of 10.0.0.1"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
    ("2002:c0a8:0101::", "6to4 form of 192.168.1.1"),
    ("64:ff9b::127.0.0.1", "NAT64 form of 127.0.0.1"),
    ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",  # just below RFC 1918's 172.16/12
    "172.32.0.0",  # just above it
    "198.17.255.255",  # just below benchmarking
    "198.20.0.0",  # just above it
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "2002:808:808::1",  # 6to4 of a public address
    "64:ff9b::8.8.8.8",  # NAT64 of a public address: how IPv6-only hosts reach IPv4
]


@pytest.mark.parametrize(("address", "words"), BLOCKED)
def test_special_purpose_addresses_are_blocked_with_a_reason(address: str, words: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address), ())
    assert reason is not None
    assert words in reason
    assert reason.startswith(str(ipaddress.ip_address(address)))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), ()) is None


def test_the_reason_is_a_short_sentence_naming_the_address() -> None:
    assert blocked_reason(ipaddress.ip_address("127.0.0.1")) == "127.0.0.1 is a loopback address"


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("10.1.2.3", "10.0.0.0/8"),
        ("169.254.169.254", "169.254.169.254/32"),
        ("::1", "::1/128"),
        ("fd00::5", "fc00::/7"),
        # An allowed IPv4 range also opens its IPv6 wrappings, which reach the same host.
        ("::ffff:127.0.0.1", "127.0.0.0/8"),
        ("64:ff9b::10.0.0.1", "10.0.0.0/8"),
    ],
)
def test_an_allowed_network_opens_its_addresses_whatever_their_range(
    address: str, network: str
) -> None:
    ip = ipaddress.ip_address(address)
    assert blocked_reason(ip, ()) is not None
    assert blocked_reason(ip, (ipaddress.ip_network(network),)) is None


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("127.0.0.1", "10.0.0.0/8"),
        ("10.0.0.1", "10.0.0.0/32"),
        ("::1", "127.0.0.0/8"),
        ("169.254.169.254", "127.0.0.0/8"),
    ],
)
def test_an_allowed_network_opens_nothing_outside_itself(address: str, network: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), (ipaddress.ip_network(network),))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("10.0.0.1", "10.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("[::FFFF:7F00:1]", "::ffff:127.0.0.1"),
        ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("[fe80::1%25eth0]", "fe80::1%eth0"),
    ],
)
def test_literal_ip_recognises_every_spelling_libc_accepts(host: str, address: str) -> None:
    assert literal_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "LOCALHOST.",
        "127.0.0.1.example.com",
        "1.2.3.4.5",
        "256.0.0.1",  # a leading part over 255
        "1.16777216",  # the last part too large for the bytes it fills
        "08.0.0.1",  # 8 is not an octal digit
        "1..2",
        "",
        "0x7g.1",
        "1_0.0.0.1",  # int() would accept the underscore
        "١٢٧.0.0.1",  # int() would accept Arabic-Indic digits
        "[not-an-ip]",
        "[127.0.0.1]",  # brackets are for IPv6
    ],
)
def test_literal_ip_leaves_hostnames_and_malformed_numbers_alone(host: str) -> None:
    assert literal_ip(host) is None


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "0", "[::ffff:127.0.0.1]"]
)
def test_numeric_tricks_for_loopback_are_blocked_once_recognised(host: str) -> None:
    address = literal_ip(host)
    assert address is not None
    assert blocked_reason(address, ()) is not None
