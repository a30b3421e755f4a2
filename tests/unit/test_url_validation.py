"""Endpoint URL validation at creation: table-driven, then fuzzed with hypothesis."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.addresses import blocked_reason, literal_ip
from webhooks.endpoints import validate_url
from webhooks.errors import InvalidEndpointURL
from webhooks.settings import Settings

STRICT = Settings.from_env({})
DEV = Settings.from_env({"WEBHOOKS_ALLOW_HTTP": "true", "WEBHOOKS_ALLOWED_NETWORKS": "127.0.0.0/8"})


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks",
        "https://example.com:8443/a/b?c=d",
        "https://EXAMPLE.com./x",
        "https://93.184.216.34/hooks",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hooks",
        "https://bücher.example/hooks",
    ],
)
def test_good_urls_are_accepted(url: str) -> None:
    assert validate_url(url, STRICT) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://example.com/", "must use https"),
        ("ftp://example.com/", "must use https"),
        ("example.com/hooks", "must use https"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https:///path", "no host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:99999/", "malformed"),
        ("https://exa mple.com/", "without spaces"),
        ("", "non-empty"),
        ("https://127.0.0.1/", "loopback"),
        ("https://2130706433/", "127.0.0.1"),
        ("https://0x7f.1/", "127.0.0.1"),
        ("https://127.1/", "127.0.0.1"),
        ("https://0/", "0.0.0.0"),
        ("https://[::ffff:127.0.0.1]/", "127.0.0.1"),
        ("https://[::1]/", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://10.1.2.3/", "private"),
        ("https://100.64.0.1/", "carrier-grade"),
        ("https://[fd00::1]/", "refused"),
        ("https://exa\x9dmple.com/", "control characters"),
        ("https://+weird/", "valid DNS name"),
        ("https://a_b.com/", "valid DNS name"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, fragment: str) -> None:
    with pytest.raises(InvalidEndpointURL, match=fragment):
        validate_url(url, STRICT)


def test_a_refused_address_says_how_to_allow_it() -> None:
    with pytest.raises(InvalidEndpointURL, match="WEBHOOKS_ALLOWED_NETWORKS"):
        validate_url("https://127.0.0.1/", STRICT)


def test_development_settings_open_http_and_loopback_on_purpose() -> None:
    assert validate_url("http://127.0.0.1:8080/hooks", DEV)
    with pytest.raises(InvalidEndpointURL):
        validate_url("http://10.0.0.1/", DEV)


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){0,2}\.?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){0,2}\.?", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.integers(0, 2**32 - 1).map(str),
    st.text(max_size=30),
)
urls = st.one_of(
    st.builds(
        lambda scheme, userinfo, host, port, path, frag: (
            f"{scheme}://{userinfo}{host}{port}{path}{frag}"
        ),
        st.sampled_from(["https", "https", "https", "HTTPS", "http", "ftp", "javascript", ""]),
        st.sampled_from(["", "", "", "u@", "u:p@", ":@"]),
        hosts,
        st.sampled_from(["", "", ":443", ":8443", ":0", ":65536", ":x"]),
        st.one_of(
            st.from_regex(r"(/[a-zA-Z0-9._~%-]{0,8}){0,3}(\?[a-z=&]{0,10})?", fullmatch=True),
            st.text(max_size=20),
        ),
        st.sampled_from(["", "", "", "#", "#a"]),
    ),
    st.text(max_size=80),
)


@settings(max_examples=400, deadline=None)
@given(urls)
def test_fuzzed_urls_are_either_refused_cleanly_or_safe(url: str) -> None:
    try:
        validate_url(url, STRICT)
    except InvalidEndpointURL:
        return  # refused with our error, never another exception
    parts = urlsplit(url)
    assert parts.scheme.lower() == "https"
    assert parts.username is None and parts.password is None and "@" not in parts.netloc
    assert not parts.fragment and "#" not in url
    assert parts.hostname
    assert not any(c.isspace() for c in url)
    ip = literal_ip(parts.hostname)
    if ip is None:
        assert parts.hostname.encode("idna").isascii()
        assert all(c.isalnum() or c in ".-" for c in parts.hostname.encode("idna").decode())
    else:
        assert blocked_reason(ip, ()) is None
        assert not ipaddress.ip_address(ip).is_private


@pytest.mark.parametrize(
    "host",
    [
        "127\u30020\u30020\u30021",  # ideographic full stops
        "127\uff0e0\uff0e0\uff0e1",  # full-width full stops
        "\uff11\uff12\uff17.0.0.1",  # full-width digits
        "10\uff610\uff610\uff611",  # half-width ideographic full stops
    ],
)
def test_unicode_spellings_of_a_blocked_address_are_refused(host: str) -> None:
    with pytest.raises(InvalidEndpointURL, match=r"refused: .* is a (loopback|private)"):
        validate_url(f"https://{host}/hooks", STRICT)


@pytest.mark.parametrize(
    ("host", "meant"),
    [
        ("010.8.8.8", "8.8.8.8"),  # octal to libc, decimal to others
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x08.0x08.0x08.0x08", "8.8.8.8"),
        ("134744072", "8.8.8.8"),
        ("0", "0.0.0.0"),
        ("\uff10\uff11\uff10.8.8.8", "8.8.8.8"),  # full-width 010.8.8.8
    ],
)
def test_ambiguous_numeric_addresses_are_refused_with_the_plain_form(host: str, meant: str) -> None:
    with pytest.raises(InvalidEndpointURL, match=f"ambiguous form .*: {re.escape(meant)}$"):
        validate_url(f"https://{host}/hooks", STRICT)


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3.4.5", "example.123", "example.0x1f"])
def test_a_host_ending_in_a_number_must_be_an_address(host: str) -> None:
    with pytest.raises(InvalidEndpointURL, match="ends in a number"):
        validate_url(f"https://{host}/hooks", STRICT)


def test_a_name_that_only_unicode_mapping_makes_valid_says_how_to_write_it() -> None:
    # UTS-46 maps full-width letters; the HTTP client would refuse them at every attempt.
    with pytest.raises(InvalidEndpointURL, match=r"write it as example\.com"):
        validate_url("https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/hooks", STRICT)


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/hooks", "https://8.8.8.8./hooks", "https://ex\u3002ample.com/"]
)
def test_plain_public_addresses_and_unicode_dots_in_names_are_accepted(url: str) -> None:
    assert validate_url(url, STRICT) == url
