"""The command line as a whole: every command explains itself with an example."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_help_shows_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="guppyforge")
    assert result.exit_code == 0, result.output
    # The usage line names the command once; an example names it again.
    assert result.output.count(f"guppyforge {name}") >= 2, result.output
