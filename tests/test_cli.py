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


def test_train_options_are_the_dataclass_fields_with_their_defaults():
    from dataclasses import fields

    from guppyforge.train.config import TrainOptions

    params = {p.name: p for p in cli.commands["train"].params}
    on_cli = [f for f in fields(TrainOptions) if f.metadata.get("help")]
    assert set(params) - {f.name for f in on_cli} == {
        "data_dir",
        "out_dir",
        "data_format",
        "force",
        "quiet",
        "nproc",  # how many processes, not how one trains: torchrun's, not train()'s
    }
    for f in on_cli:
        assert params[f.name].default == f.default, f.name
        if f.metadata["choices"]:
            assert list(params[f.name].type.choices) == list(f.metadata["choices"]), f.name
    shown = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "[default: muon]" in shown and "0.006 with muon, 0.003 with adamw" in shown
