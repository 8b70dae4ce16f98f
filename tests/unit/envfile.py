"""systemd's ``EnvironmentFile=`` syntax, for tests of the files we ship for it.

A transcription of ``parse_env_file_internal()`` in systemd's src/basic/env-file.c
(systemd.exec(5), "EnvironmentFile="): ``#`` and ``;`` start a comment only where a key
could start (at the beginning of a line, after blanks); a ``#`` after a value is part
of the value. ``KEY=VALUE`` with blanks around the key and before the value ignored
and trailing blanks of an unquoted value stripped; single quotes keep everything,
double quotes keep everything but ``\\"``, ``\\\\``, ``\\` `` and ``\\$`` escapes; a
backslash before a newline continues the line (in a comment too: the comment goes
on). A line without ``=`` is ignored (systemd logs it). Later assignments win.
"""

from __future__ import annotations

COMMENTS = "#;"
BLANKS = " \t"
NEWLINES = "\n\r"


def parse_env_file(text: str) -> list[tuple[str, str]]:
    """Every assignment in ``text``, in order, as systemd reads them."""
    out: list[tuple[str, str]] = []
    state, key, value, trailing = "pre_key", "", "", 0

    def finish(strip: int) -> None:
        out.append((key.rstrip(BLANKS), value[:len(value) - strip] if strip else value))

    for c in text + "\n":
        if state == "pre_key":
            if c in COMMENTS:
                state = "comment"
            elif c not in BLANKS + NEWLINES:
                state, key = "key", c
        elif state == "key":
            if c in NEWLINES:
                state = "pre_key"  # no '=': ignored
            elif c == "=":
                state, value, trailing = "pre_value", "", 0
            else:
                key += c
        elif state == "pre_value":
            if c in NEWLINES:
                finish(0)
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in BLANKS:
                state, value, trailing = "value", value + c, 0
        elif state == "value":
            if c in NEWLINES:
                finish(trailing)
                state = "pre_key"
            elif c == "\\":
                state, trailing = "value_escape", 0
            else:
                value += c
                trailing = trailing + 1 if c in BLANKS else 0
        elif state == "value_escape":
            state = "value"
            if c not in NEWLINES:  # backslash-newline: the value goes on on the next line
                value += c
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value += c
            elif c not in NEWLINES:
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in NEWLINES:
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"
    return out
