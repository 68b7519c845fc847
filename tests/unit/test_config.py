"""Configuration: precedence, every class of error, and the flag/env spellings."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ipv4proxy import __version__
from ipv4proxy.cli import main, parse
from ipv4proxy.config import (
    MASK,
    Config,
    Listener,
    _setting,
    changed_keys,
    env_name,
    flag_name,
    iter_keys,
    load,
    parse_hostport,
    to_yaml,
    unknown_environment,
)
from ipv4proxy.errors import ConfigError
from ipv4proxy.rules import Cidr

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config.example.yaml"


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


def test_list_flags_take_commas_like_the_environment() -> None:
    """``--policy-ports 80,443`` is the env form's list; repeating the flag adds to it."""
    argv = ["--policy-ports", "80,443", "--policy-ports", "8000-8100", "--nameserver", "127.0.0.1"]
    config = parse(argv, {})
    assert config.policy.ports == ("80", "443", "8000-8100")
    assert (
        config.policy.ports
        == load(environ={"IPV4PROXY_POLICY_PORTS": "80,443,8000-8100"}).policy.ports
    )
    assert config.resolver.nameservers == ("127.0.0.1",)
    assert parse(["--listen", "127.0.0.1:1,127.0.0.1:2"], {}).listeners == (
        Listener("127.0.0.1", 1),
        Listener("127.0.0.1", 2),
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
        ("log: {format: xml}", r"^log\.format: expected one of text, json, got 'xml'$"),
        ("admin: {listen: 9128}", r"^admin\.listen: expected HOST:PORT, or an empty string"),
        ("admin: {listen: '[::1]:9128'}", r"^admin\.listen: expected an IPv4 HOST:PORT"),
        ("drain: {grace_period: -1}", r"^drain\.grace_period: expected a number > 0"),
        ("drain: {grace: 1}", r"^drain\.grace: unknown key"),
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


def test_admin_listener_can_be_turned_off() -> None:
    assert load("admin: {listen: ''}").admin.listen == ""
    assert load(environ={"IPV4PROXY_ADMIN_LISTEN": ""}).admin.listen == ""


def test_example_file_documents_every_key_and_loads_to_the_defaults() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert load(text) == Config()
    tree = yaml.safe_load(text)
    for path, _, _ in iter_keys():
        node = tree
        for part in path:
            assert isinstance(node, dict), path
            assert part in node, f"{'.'.join(path)} missing from {EXAMPLE.name}"
            node = node[part]
        # Each key has its own comment, on the line right above it.
        assert re.search(rf"#[^\n]*\n[ ]*{path[-1]}:", text), f"{'.'.join(path)} has no comment"


def test_effective_configuration_round_trips_through_yaml() -> None:
    config = load("dialer: {connect_timeout: 3}\nlisteners: ['127.0.0.1:1', '127.0.0.2:2']")
    assert load(to_yaml(config)) == config


@dataclass(frozen=True, slots=True)
class _User:
    name: str = _setting("", "user name")
    password: str = _setting("", "password", secret=True)


@dataclass(frozen=True, slots=True)
class _WithSecrets:
    token: str = _setting("", "a secret", secret=True)
    users: tuple[_User, ...] = _setting((), "users")
    level: str = _setting("info", "not a secret")


def test_fields_marked_secret_are_masked_wherever_they_sit() -> None:
    config = _WithSecrets(token="s3cret-token", users=(_User("ana", "hunter2"),))
    text = to_yaml(config)  # type: ignore[arg-type]
    assert "s3cret-token" not in text
    assert "hunter2" not in text
    assert yaml.safe_load(text) == {
        "token": MASK,
        "users": [{"name": "ana", "password": MASK}],
        "level": "info",
    }
    # An unset secret shows as unset, so an operator sees whether one is configured.
    assert yaml.safe_load(to_yaml(_WithSecrets()))["token"] == ""  # type: ignore[arg-type]


def test_every_secret_key_of_the_real_config_is_masked() -> None:
    secrets = [path for path, _, f in iter_keys() if f.metadata.get("secret")]
    for path, _, f in iter_keys():
        assert "secret" in f.metadata, path  # every key says whether it is one
    tree = yaml.safe_load(to_yaml(Config()))
    for path in secrets:
        node = tree
        for part in path:
            node = node[part]
        assert node in (MASK, "", [], None, 0), path
    shown = to_yaml(load("auth: {users: ['ana:hunter2', 'bo:s3cret']}"))
    assert "hunter2" not in shown
    assert "s3cret" not in shown
    assert yaml.safe_load(shown)["auth"]["users"] == [MASK, MASK]


def test_check_config_prints_the_effective_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(EXAMPLE), "--connect-timeout", "4"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert load(printed) == dataclasses.replace(
        Config(), dialer=dataclasses.replace(Config().dialer, connect_timeout=4.0)
    )


def test_check_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("drain: {grace_period: soon}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(bad)])
    assert exited.value.code == 2
    assert "drain.grace_period: expected a number" in capsys.readouterr().err


def test_changed_keys_names_keys_not_values() -> None:
    old = load()
    new = load("dialer: {connect_timeout: 3}\nlog: {format: json}")
    assert changed_keys(old, new) == ["log.format", "dialer.connect_timeout"]
    assert changed_keys(old, old) == []


def test_unknown_variables_are_named_with_the_nearest_setting() -> None:
    warnings = unknown_environment(
        {
            "IPV4PROXY_DIALER_CONECT_TIMEOUT": "1",
            "IPV4PROXY_NAMESERVER": "1.1.1.1",
            "IPV4PROXY_LISTEN": "127.0.0.1:1",
            "IPV4PROXY_LISTENERS": "127.0.0.1:1",
            "IPV4PROXY_CONFIG": "/etc/ipv4proxy.yaml",
            "IPV4PROXY_QUUX": "1",
            "HOME": "/root",
        }
    )
    assert warnings == [
        "IPV4PROXY_DIALER_CONECT_TIMEOUT is not a setting and is ignored"
        " (did you mean IPV4PROXY_DIALER_CONNECT_TIMEOUT?)",
        "IPV4PROXY_NAMESERVER is not a setting and is ignored"
        " (did you mean IPV4PROXY_RESOLVER_NAMESERVERS?)",
        "IPV4PROXY_QUUX is not a setting and is ignored",
    ]


def test_listeners_variable_follows_the_naming_rule_too() -> None:
    assert load(None, {"IPV4PROXY_LISTENERS": "127.0.0.1:4000"}).listeners[0].port == 4000
    assert load(None, {"IPV4PROXY_LISTEN": "127.0.0.1:4001"}).listeners[0].port == 4001


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy: {ports: [80]}\npolicy: {ports: [443]}\n", "duplicate key 'policy' (line 2)"),
        ("log: {level: info, level: debug}\n", "duplicate key 'level'"),
        ("policy: {ports: []}\n", "policy.ports: expected at least one port"),
        ("listeners: [':3131']\n", "the host is missing in ':3131'"),
    ],
)
def test_uneven_input_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(text)


def test_an_empty_port_list_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policy\.ports: expected at least one port"):
        load(None, {"IPV4PROXY_POLICY_PORTS": ""})


def test_words_in_any_case_and_a_scalar_for_a_list() -> None:
    config = load(
        "log: {level: DEBUG, format: JSON}\npolicy: {ports: 443, deny_cidrs: 10.0.0.0/8}\n"
    )
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert (config.policy.ports, config.policy.deny_cidrs) == (("443",), ("10.0.0.0/8",))


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_help_lists_commands_placeholders_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["--help"], capsys)
    assert "ipv4proxy check-config [FLAGS]" in text
    assert "ipv4proxy doctor [FLAGS] HOST[:PORT]" in text
    assert "--connect-timeout SECONDS" in text
    assert "--log-level debug|info|warning|error" in text
    assert "VALUE" not in text
    assert "(default: 10.0)" in text  # dialer.connect_timeout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _help(["--version"], capsys).strip() == f"ipv4proxy {__version__}"


def test_doctor_help_lists_only_what_doctor_reads(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["doctor", "--help"], capsys)
    assert "--resolver-timeout" in text
    assert "--connect-timeout" in text
    assert "--listen" not in text
    assert "--policy-ports" not in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {("listeners",): ["127.0.0.1:3131", "127.0.0.1:3131"]},
            "listeners[1]: 127.0.0.1:3131 is also listeners[0] (127.0.0.1:3131)",
        ),
        (
            {("listeners",): ["127.0.0.1:9128"]},
            "admin.listen: 127.0.0.1:9128 is also listeners[0] (127.0.0.1:9128)",
        ),
    ],
)
def test_one_address_is_bound_once(flags: dict[tuple[str, ...], list[str]], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, None, flags)


def test_port_zero_and_other_addresses_do_not_collide() -> None:
    flags: dict[tuple[str, ...], str | list[str]] = {
        ("listeners",): ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.2:9128"]
    }
    assert len(load(None, None, flags).listeners) == 3


def test_rules_are_parsed_once_into_typed_values() -> None:
    """Policy and parents take these as they are; they are not settings."""
    config = load(
        "policy: {ports: ['80', '8000-8001'], deny_domains: ['*.Bad.test.'],"
        " allow_cidrs: [10.0.0.0/8]}\n"
        "listeners: [{host: 127.0.0.1, port: 3128, clients: [10.1.0.0/16]}]\n"
        "parents: [{url: 'http://10.0.0.1:1', domains: [w.test], cidrs: [192.0.2.0/24],"
        " ports: ['443']}]\n"
    )
    rules = config.policy.rules
    assert rules.ports == {80, 8000, 8001}
    [pattern] = rules.deny_domains
    assert pattern.text == "*.Bad.test."
    assert pattern.matches("x.bad.test")
    assert not pattern.matches("bad.test")
    assert rules.allow_cidrs == (Cidr("10.0.0.0/8", ipaddress.IPv4Network("10.0.0.0/8")),)
    assert config.listeners[0].networks[0].network == ipaddress.IPv4Network("10.1.0.0/16")
    parent = config.parents[0].rules
    assert (parent.ports, parent.domains[0].name) == (frozenset({443}), "w.test")
    assert parent.cidrs[0].network == ipaddress.IPv4Network("192.0.2.0/24")
    shown = to_yaml(config)
    assert "rules" not in shown
    assert "networks" not in shown
    assert all(path[-1] not in {"rules", "networks"} for path, _, _ in iter_keys())
    with pytest.raises(ConfigError, match=r"policy\.rules: unknown key"):
        load("policy: {rules: {}}")
