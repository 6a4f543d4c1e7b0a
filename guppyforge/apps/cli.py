"""The `guppyforge` command line: each command parses its options and calls one library function.

No logic lives here. Library modules are imported inside each command so that light commands
(validate, preview, new-persona, personas) never pay for importing torch or datasets. This is
the only module that imports click; a `GuppyError` from the library becomes one `error:` line.
"""

from __future__ import annotations

import click

from guppyforge import __version__
from guppyforge.apps import cli_data, cli_model
from guppyforge.errors import GuppyError


class UserError(click.ClickException):
    """A GuppyError on its way out: `error: <message>`, exit status 1, no traceback."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadUsage(click.UsageError):
    """A bad option value or a missing argument, as one `error:` line (exit 2), no usage block."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()} See --help.", err=True)


class Commands(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GuppyError as e:
            raise UserError(str(e)) from None
        except click.UsageError as e:
            raise BadUsage(e.format_message(), e.ctx) from None
        except BrokenPipeError:  # `guppyforge ... | head`: the reader left, nothing to say
            ctx.exit(0)
        except OSError as e:  # the disk said no (read-only, full, a file in the way): one line
            where = f"{e.filename}: " if e.filename else ""
            raise UserError(
                f"{where}{e.strerror or e}. Check the path and its permissions"
            ) from None
        except KeyboardInterrupt:
            # Ctrl-C: not a success. 130 is what shells report for a command stopped by SIGINT.
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="guppyforge")
def cli() -> None:
    """Fork a tiny character language model: persona YAML -> dataset -> model -> chat.

    \b
    guppyforge new-persona cat          # write cat.yaml, a starter to edit
    guppyforge validate cat.yaml        # check it, see how many conversations it can make
    guppyforge generate cat.yaml --out data/cat
    guppyforge train data/cat --out runs/cat --preset tiny
    guppyforge chat runs/cat
    """


# The commands, in the order of the pipeline.
cli.add_command(cli_data.validate)
cli.add_command(cli_data.preview)
cli.add_command(cli_data.new_persona)
cli.add_command(cli_data.personas)
cli.add_command(cli_data.generate)
cli.add_command(cli_model.train)
cli.add_command(cli_model.presets)
cli.add_command(cli_model.chat_cmd)
cli.add_command(cli_model.eval_cmd)
cli.add_command(cli_model.why_cmd)
cli.add_command(cli_model.export_cmd)
cli.add_command(cli_model.serve_cmd)
cli.add_command(cli_data.import_card_cmd)
cli.add_command(cli_data.export_card_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="guppyforge")


if __name__ == "__main__":
    main()
