"""The ethtool stand-in's command line (``python -m overlayd.plumbing.ethtool DEV [on|off]``)."""

from __future__ import annotations

import pytest

from overlayd.plumbing import ethtool


@pytest.mark.parametrize("argv", [[], ["a", "b", "c"], ["eth0", "yes"]])
def test_cli_usage(argv, capsys):
    assert ethtool.main(argv) == 2
    assert "usage" in capsys.readouterr().err
