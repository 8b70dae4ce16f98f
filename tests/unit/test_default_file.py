"""systemd/overlayd.default, read as systemd reads ``EnvironmentFile=/etc/default/overlayd``
(issue 21, broken point 2).

Every commented ``#OVERLAYD_X=value`` line is an example an operator will uncomment:
uncommented, each value must be one overlayd accepts (click's own parsing of the
environment, callbacks included), and the file must name every flag's variable."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from overlayd.cli import daemon
from overlayd.cli.common import ENV_PREFIX
from overlayd.errors import ConfigError
from overlayd.lease.etcd import parse_endpoints

from .envfile import parse_env_file

DEFAULT_FILE = Path(__file__).parents[2] / "systemd" / "overlayd.default"
# "#OVERLAYD_X=..." is a commented assignment; "# text" (a blank after the mark) is prose
COMMENTED_ASSIGNMENT = re.compile(r"^[#;](?=[A-Za-z_][A-Za-z0-9_]*=)", re.MULTILINE)


def uncommented(text: str) -> str:
    """``text`` with every commented assignment uncommented, as an operator would."""
    return COMMENTED_ASSIGNMENT.sub("", text)


def envvar_of(param: click.Parameter) -> str | None:
    """The environment variable click reads for ``param`` under the command's prefix."""
    if not isinstance(param, click.Option) or not param.expose_value:
        return None  # --help, --version
    if param.envvar:
        return param.envvar if isinstance(param.envvar, str) else param.envvar[0]
    if param.allow_from_autoenv:
        return f"{ENV_PREFIX}_{param.name.upper()}"
    return None


def deprecated(param: click.Parameter) -> bool:
    """A flag kept for old command lines, not one to advertise in the file."""
    return bool(getattr(param, "deprecated", False)) or (getattr(param, "help", None) or "").startswith("Deprecated")


def option_envvars(with_deprecated: bool = True) -> dict[str, click.Option]:
    return {var: p for p in daemon.cli.params if (var := envvar_of(p)) and (with_deprecated or not deprecated(p))}


def parse_with_env(monkeypatch, env: dict[str, str]) -> None:
    """Run the daemon command's parsing (types, choices, callbacks), not its body."""
    for var in option_envvars():
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    ctx = daemon.cli.make_context(daemon.PROG, [])  # with the command's context_settings (the env prefix)
    parse_endpoints(ctx.params["etcd_endpoints"])  # checked in the command body: the part that needs no files


# -- the parser itself, on the rules systemd.exec(5) states --------------------------------------------------


def test_envfile_parser_keeps_a_trailing_comment_in_the_value():
    assert parse_env_file("A=user        # or kernel\n") == [("A", "user        # or kernel")]


def test_envfile_parser_rules():
    text = ("# comment\n ; comment too\n\nA = 1 \nB=\"x  # y\" \nC='q\"r'\nD=two \\\n  lines\n"
            "E=\"a\\\"b\\\\c\\n\"\nno equals sign\n# a comment \\\nF=swallowed by the comment\nG=\nA=2\n")
    assert parse_env_file(text) == [("A", "1"), ("B", "x  # y"), ("C", 'q"r'), ("D", "two   lines"),
                                    ("E", 'a"b\\c\\n'), ("G", ""), ("A", "2")]


def test_uncommenting_leaves_prose_alone():
    assert uncommented("# prose: X=1\n#X=2\n;Y=3\n") == "# prose: X=1\nX=2\nY=3\n"


# -- the file ------------------------------------------------------------------------------------------------


def assignments() -> list[tuple[str, str]]:
    return parse_env_file(uncommented(DEFAULT_FILE.read_text()))


def test_every_line_is_a_comment_an_assignment_or_blank():
    for line in DEFAULT_FILE.read_text().splitlines():
        assert not line or line.startswith("# ") or line == "#" or COMMENTED_ASSIGNMENT.match(line) \
            or re.match(r"[A-Z_][A-Z0-9_]*=", line), line


def test_every_variable_is_an_option_of_overlayd():
    known = option_envvars()
    unknown = sorted({var for var, _ in assignments() if var not in known})
    assert not unknown, f"not a variable of any overlayd option: {unknown}"


def test_every_option_has_its_variable_in_the_file():
    listed = {var for var, _ in assignments()}
    missing = sorted(set(option_envvars(with_deprecated=False)) - listed)
    assert not missing, f"systemd/overlayd.default does not list {missing}"


@pytest.mark.parametrize("var,value", assignments())
def test_each_value_uncommented_is_accepted(monkeypatch, var, value):
    if var not in option_envvars():
        pytest.fail(f"{var} is not a variable of any overlayd option")
    active = dict(parse_env_file(DEFAULT_FILE.read_text()))  # what the file sets as shipped
    try:
        parse_with_env(monkeypatch, {**active, var: value})
    except (click.UsageError, ConfigError) as exc:
        message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        pytest.fail(f"{var}={value!r} uncommented: overlayd refuses it: {message}")


def test_all_values_uncommented_together_are_accepted(monkeypatch):
    known = option_envvars()
    env = {var: value for var, value in assignments() if var in known}
    parse_with_env(monkeypatch, env)


def test_the_operator_guides_example_is_accepted(monkeypatch):
    guide = (DEFAULT_FILE.parents[1] / "docs" / "operator-guide.md").read_text()
    example = re.search(r"A `/etc/default/overlayd` for .*?```sh\n(.*?)```", guide, re.DOTALL)
    assert example, "docs/operator-guide.md has no /etc/default/overlayd example"
    env = parse_env_file(example.group(1))
    assert env and all(var in option_envvars() for var, _ in env), env
    assert {"OVERLAYD_ETCD_CAFILE", "OVERLAYD_ETCD_CERTFILE", "OVERLAYD_ETCD_KEYFILE"} <= dict(env).keys()
    parse_with_env(monkeypatch, dict(env))
