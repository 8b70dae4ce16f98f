"""README.md and docs/*.md against the tree and the command lines (issue 21, docs).

Relative links must reach a file (and a heading, with ``#anchor``); every ``--flag``
in the docs must be a flag of one of our commands or of a named foreign tool; every
``overlayd --flag`` an option of overlayd, and every ``overlayctl [flags] COMMAND
[SUBCOMMAND] [--flag]`` in a code span or code block a command of overlayctl with
those options. So the docs cannot drift from the click commands."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from overlayd.cli import ctl, daemon
from overlayd.lab import bench, bench_afxdp, bench_control
from overlayd.lab import cli as lab

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Flags the docs quote from other programs, each with where it belongs.
FOREIGN_FLAGS = {
    "--now": "systemctl enable/disable --now",
    "--dport": "iptables",
    "--client-cert-auth": "etcd",
    "--auth-token-ttl": "etcd",
    "--kube-subnet-mgr": "flanneld",
}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(path.read_text()).splitlines() if line.startswith("#")}


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def code_segments(text: str) -> list[str]:
    """Inline code spans (joined across line breaks) and the lines of fenced code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", prose(text))
    return [s.replace("\n", " ") for s in spans] + [line for block in blocks for line in block.splitlines()]


def all_params(command: click.Command) -> list[click.Parameter]:
    params = list(command.params)
    for sub in getattr(command, "commands", {}).values():
        params += all_params(sub)
    return params


def option_names(params) -> set[str]:
    return {name for p in params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}


#: scripts/install's own flags, from its argument ``case``
INSTALL_FLAGS = set(re.findall(r"^ +(--[a-z-]+)\)", (ROOT / "scripts" / "install").read_text(), flags=re.MULTILINE))

OUR_FLAGS = option_names(all_params(daemon.cli) + all_params(ctl.cli) + all_params(lab.cli)
                         + all_params(bench.main) + all_params(bench_control.main) + all_params(bench_afxdp.main)) \
    | INSTALL_FLAGS | {"--help", "--version"}


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_relative_links_reach_a_file_and_a_heading(doc):
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_flag_exists(doc):
    unknown = sorted({f for f in FLAG.findall(doc.read_text()) if f not in OUR_FLAGS and f not in FOREIGN_FLAGS})
    assert not unknown, f"flags of no command of ours (nor in FOREIGN_FLAGS): {unknown}"


def words_after(segment: str, program: str) -> list[list[str]]:
    """The words after each ``program`` in a code segment, up to a comment or a pipe."""
    found = []
    for m in re.finditer(rf"(?<![\w/.-]){program}(?![\w.-])", segment):
        rest = re.split(r"\s#|\||;|&&", segment[m.end():])[0]
        found.append(rest.split())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_overlayd_flags_are_overlayds(doc):
    names = option_names(daemon.cli.params) | {"--help", "--version"}
    wrong = [(flag, seg) for seg in code_segments(doc.read_text()) for words in words_after(seg, "overlayd")
             if words and words[0].startswith("-") for flag in FLAG.findall(" ".join(words)) if flag not in names]
    assert not wrong, f"not options of overlayd: {wrong}"


def resolve_overlayctl(words: list[str]) -> str | None:
    """Why ``overlayctl WORDS`` is not a command line overlayctl knows, or None."""
    command: click.Command = ctl.cli
    known = {name: p for p in ctl.cli.params if isinstance(p, click.Option) for name in p.opts}
    words = [w for w in words if w != "..."]  # elided flags
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            flag = word.split("=")[0]
            if flag not in known and flag not in ("-h", "--help", "--version"):
                return f"{flag} is not an option of {command.name}"
            if flag in known and not known[flag].is_flag and not known[flag].count and "=" not in word:
                i += 1  # its value
        elif word.isupper():  # a placeholder: COMMAND, FILE, SUBNET
            if isinstance(command, click.Group) and command is ctl.cli:
                return None  # "overlayctl COMMAND --help": any command
        elif isinstance(command, click.Group):
            if word not in command.commands:
                return f"{word!r} is not a command of {command.name}"
            command = command.commands[word]
            known.update({name: p for p in command.params if isinstance(p, click.Option) for name in p.opts})
        i += 1
    return None


def overlayctl_lines(text: str) -> list[list[str]]:
    """Every overlayctl command line: in code, and the first column of the command table."""
    lines = [words for seg in code_segments(text) for words in words_after(seg, "overlayctl")]
    table = re.search(r"^\| command \| shows / does \|.*\n\|[-|]+\n((?:\|.*\n)*)", text, flags=re.MULTILINE)
    for row in table.group(1).splitlines() if table else []:
        first_cell = row.split(" | ")[0]
        lines += [span.split() for span in re.findall(r"`([^`]+)`", first_cell)]
    return lines


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_overlayctl_commands_exist(doc):
    wrong = [(" ".join(words), why) for words in overlayctl_lines(doc.read_text())
             if (why := resolve_overlayctl(words))]
    assert not wrong, wrong


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "metrics.md"], ids=doc_id)
def test_metrics_named_are_in_the_metric_reference(doc):
    reference = (ROOT / "docs" / "metrics.md").read_text()
    unknown = sorted({m for m in re.findall(r"\boverlayd_[a-z_]+[a-z]", doc.read_text()) if m not in reference})
    assert not unknown, f"metrics not in docs/metrics.md: {unknown}"


# -- the checks can fail -------------------------------------------------------------------------------------


def test_the_checks_catch_drift():
    assert resolve_overlayctl(["lease", "renew", "SUBNET"]) == "'renew' is not a command of lease"
    assert resolve_overlayctl(["subnets", "--wacth"]) == "--wacth is not an option of subnets"
    assert resolve_overlayctl(["--etcd-endpoints", "URL", "config", "get", "--json"]) is None
    assert words_after("overlayd --log-levl debug  # note", "overlayd") == [["--log-levl", "debug"]]
    assert "--log-levl" not in OUR_FLAGS and "--vxlan-impl" in OUR_FLAGS
    assert slug("Under systemd: signals, ports, stopping") == "under-systemd-signals-ports-stopping"
    assert code_segments("a `overlayctl\nsubnets` b\n```\nx y\n```\n") == ["overlayctl subnets", "x y"]
