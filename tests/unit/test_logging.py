"""Log lines carry a timestamp, except under journald (which keeps its own)."""

from __future__ import annotations

import logging
import os
import re

from overlayd.cli.common import log_formatter, under_journald

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def _record(message: str = "leased 10.244.3.0/24") -> logging.LogRecord:
    return logging.LogRecord("overlayd", logging.INFO, __file__, 1, message, None, None)


def _journal_env(path) -> dict:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_timestamp_on_every_line_outside_journald(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        line = log_formatter("overlayd", stream, environ={}).format(_record())
    assert re.fullmatch(STAMP + r" overlayd: INFO leased 10\.244\.3\.0/24", line), line


def test_no_timestamp_when_stderr_is_the_journal_stream(tmp_path):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        env = _journal_env(path)
        assert under_journald(stream, env)
        assert log_formatter("overlayd", stream, env).format(_record()) == "overlayd: INFO leased 10.244.3.0/24"


def test_inherited_journal_stream_for_another_file_still_gets_timestamps(tmp_path):
    """A process started by a journald-logged service, with stderr redirected to a file."""
    (tmp_path / "journal").write_text("")
    env = _journal_env(tmp_path / "journal")
    with open(tmp_path / "log", "w") as stream:
        assert not under_journald(stream, env)
        assert re.match(STAMP + " overlayd: ", log_formatter("overlayd", stream, env).format(_record()))


def test_malformed_journal_stream_or_no_file_descriptor_means_not_journald(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        assert not under_journald(stream, {"JOURNAL_STREAM": "garbage"})

    class NoFd:
        def fileno(self):
            raise OSError("no fd")  # io.StringIO raises io.UnsupportedOperation, an OSError

    assert not under_journald(NoFd(), {"JOURNAL_STREAM": "1:2"})
