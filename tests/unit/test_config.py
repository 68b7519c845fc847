"""Configuration: precedence, every class of error, and the flag/env spellings."""

from __future__ import annotations

import pytest

from ipv4proxy.cli import parse
from ipv4proxy.config import Config, Listener, env_name, flag_name, iter_keys, load, parse_hostport
from ipv4proxy.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3128", ("127.0.0.1", 3128)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:", "host:65536", "host:x", "::1:80"])
def test_hostport_refused_names_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--listen: expected HOST:PORT"):
        parse_hostport(text, key="--listen")


def test_no_sources_gives_the_safe_defaults() -> None:
    config = load()
    assert config == Config()
    assert config.listeners == (Listener("127.0.0.1", 3128),)
    assert config.dialer.attempt_delay == 0.25
    assert config.dialer.connect_timeout == 10.0


def test_precedence_flag_over_env_over_file() -> None:
    text = "dialer:\n  connect_timeout: 3\n  attempt_delay: 0.5\nresolver:\n  timeout: 7\n"
    env = {"IPV4PROXY_DIALER_CONNECT_TIMEOUT": "4", "IPV4PROXY_DIALER_ATTEMPT_DELAY": "0.6"}
    config = load(text, env, {("dialer", "connect_timeout"): "5"})
    assert config.dialer.connect_timeout == 5.0  # flag
    assert config.dialer.attempt_delay == 0.6  # env
    assert config.resolver.timeout == 7.0  # file


def test_listeners_from_file_env_and_flags() -> None:
    assert load("listeners: ['127.0.0.1:1', {host: 127.0.0.2, port: 2}]").listeners == (
        Listener("127.0.0.1", 1),
        Listener("127.0.0.2", 2),
    )
    assert load(environ={"IPV4PROXY_LISTEN": "127.0.0.1:1, 127.0.0.1:2"}).listeners == (
        Listener("127.0.0.1", 1),
        Listener("127.0.0.1", 2),
    )
    assert parse(["--listen", "127.0.0.1:7", "--listen", "127.0.0.1:8"], {}).listeners == (
        Listener("127.0.0.1", 7),
        Listener("127.0.0.1", 8),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "dialer: {connect_timeout: 0}",
            r"^dialer\.connect_timeout: expected a number > 0, got 0$",
        ),
        ("dialer: {connect_timeot: 1}", r"^dialer\.connect_timeot: unknown key"),
        ("bogus: 1", r"^bogus: unknown key"),
        ("listeners: [{port: 70000}]", r"^listeners\[0\]\.port: expected 0-65535, got 70000$"),
        ("listeners: ['nope']", r"^listeners\[0\]: expected HOST:PORT"),
        ("listeners: []", r"^listeners: expected at least one"),
        ("log: {level: loud}", r"^log\.level: expected one of debug, info"),
        ("limits: {max_head: 1.5}", r"^limits\.max_head: expected an integer"),
        ("limits: {max_head: many}", r"^limits\.max_head: expected an integer, got 'many'$"),
        ("resolver: 3", r"^resolver: expected a mapping"),
        ("resolver: {nameservers: '[::1]:53'}", r"^resolver\.nameservers\[0\]: ::1 is IPv6"),
        ("- a\n- b", r"^config file: expected a mapping at the top"),
        ("a: [", r"^config file: not valid YAML"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(text)


def test_env_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^dialer\.attempt_delay: expected a number"):
        load(environ={"IPV4PROXY_DIALER_ATTEMPT_DELAY": "soon"})


def test_every_key_has_help_an_env_name_and_a_flag() -> None:
    seen_env, seen_flags = set(), set()
    for path, _, f in iter_keys():
        assert f.metadata.get("help"), path
        seen_env.add(env_name(path))
        seen_flags.add(flag_name(path))
    assert len(seen_env) == len(seen_flags) == len(list(iter_keys()))


def test_short_flag_spellings() -> None:
    config = parse(
        ["--nameserver", "127.0.0.1:5353", "--connect-timeout", "2", "--hosts-file", "/dev/null"],
        {},
    )
    assert config.resolver.nameserver_addresses() == (("127.0.0.1", 5353),)
    assert config.dialer.connect_timeout == 2.0
    assert config.resolver.hosts_file == "/dev/null"
