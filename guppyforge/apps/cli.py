"""The `guppyforge` command line: each command parses its options and calls one library function.

No logic lives here. Library modules are imported inside each command so that light commands
(validate, preview, new-persona, personas) never pay for importing torch or datasets. Only this
file, cli_model.py (the model commands) and cli_options.py (their option types) import click; a
`GuppyError` from the library becomes one `error:` line. Read in this order: the persona and
dataset commands, then the group, which assembles them with cli_model's.
"""

from __future__ import annotations

import sys

import click

from guppyforge import defaults
from guppyforge.apps import cli_model
from guppyforge.apps.cli_options import SEED
from guppyforge.errors import GuppyError
from guppyforge.persona.chat_rows import FORMATS  # the standard library alone: --help stays light
from guppyforge.version import __version__

# --- The persona and dataset commands: validate, preview, new-persona, personas, generate, cards.
#
# Files are checked by the library, not click.Path(exists=True): a missing file must print one
# `error:` line like every other user error, not click's three-line usage message.


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--target",
    type=click.IntRange(min=1),
    default=defaults.ROWS,
    show_default=True,
    help="Unique conversations the persona should be able to fill.",
)
@click.option(
    "--coverage/--no-coverage",
    default=True,
    show_default=True,
    help="Also say how much of the stranger bank the persona answers (`guppyforge coverage`).",
)
def validate(files: tuple[str, ...], target: int, coverage: bool) -> None:
    """Check persona files and show how many distinct conversations each can make.

    \b
    Example:
      guppyforge validate personas/cat.yaml --target 20000
    """
    from guppyforge.apps.text import capacity_table
    from guppyforge.persona.schema import validate_persona

    failed = False
    for file in files:
        report = validate_persona(file, target)
        for line in report.errors:
            click.echo(f"error: {line}", err=True)
        for line in report.warnings:
            click.echo(f"warning: {line}", err=True)
        failed = failed or bool(report.errors)
        if not report.errors:
            warned = f" (no errors; {len(report.warnings)} warnings above)" * bool(report.warnings)
            click.echo(f"{file}: ok{warned}")
            click.echo(capacity_table(report.capacity, report.forecast))
            if coverage:
                from guppyforge.dataset.coverage import persona_coverage

                found = persona_coverage(report.persona)
                click.echo(f"  {found.summary()}: `guppyforge coverage {file}` lists the rest")
        sys.stdout.flush()  # the next file's warnings go to stderr: never into this table
    if failed:
        raise SystemExit(1)


@click.command()
@click.argument("file", type=click.Path(path_type=str))
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Conversations to show.",
)
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Same seed, same text.")
@click.option(
    "--turns",
    default=None,
    metavar="N|A-B",
    help="User turns.  [default: the persona's own mix, as generate uses]",
)
@click.option("--examples", is_flag=True, help="The hand-written examples instead (inline, file).")
def preview(
    file: str, count: int, topic: str | None, seed: int, turns: str | None, examples: bool
) -> None:
    """Print sample conversations from a persona, with the YAML lines that made them.

    The samples are spread over the indices of a 60,000-row dataset, so topics, openers and
    off-topic rows show up in the proportions `generate` gives them. A user message that
    variation changed is shown as generated, with the line its template wrote after it.

    \b
    Example:
      guppyforge preview personas/cat.yaml -n 5 --topic food --turns 2
      guppyforge preview personas/cat.yaml --examples   # inline and examples_file rows
    """
    from guppyforge.apps.text import format_conversation, spread
    from guppyforge.dataset.draw import row_makers, turn_mix, turns_for
    from guppyforge.persona.schema import load_persona

    persona = load_persona(file)
    mix = turn_mix(turns, persona)
    sampler, _, varier, offtopic = row_makers(persona, seed)
    if examples:  # every one goes into the data as written, before the generated rows
        written = sampler.examples()
        click.echo(f"# {len(written):,} hand-written examples, all in the data")
        for c in written[:count]:
            click.echo(format_conversation(c, persona.display_name))
        return
    for i in spread(count):
        if topic is None and offtopic.takes(i):  # the rows generate draws, off-topic ones too
            c = offtopic.conversation(i)
        else:
            c = sampler.conversation(i, turns_for(seed, i, mix), topic)
        varied, _ = varier.messages(c.messages, i)
        click.echo(format_conversation(c, persona.display_name, varied))


@click.command("new-persona")
@click.argument("name")
@click.option("--from", "source", default=None, help="Built-in persona name or file to copy.")
@click.option("--dir", "directory", default=".", show_default=True, help="Where to write.")
def new_persona(name: str, source: str | None, directory: str) -> None:
    """Write NAME.yaml: a commented starter character to edit (or a copy of another persona).

    \b
    Examples:
      guppyforge new-persona pip               # a neutral starter for a character Pip
      guppyforge new-persona goldie --from guppy --dir personas
    """
    from guppyforge.persona.starter import write_persona

    path = write_persona(name, source, directory)
    click.echo(f"wrote {path}. Next: guppyforge validate {path}")


@click.command()
def personas() -> None:
    """List the built-in personas.

    \b
    Example:
      guppyforge personas
      guppyforge new-persona mine --from cat   # start from one of them
    """
    from guppyforge.apps.text import list_builtin

    click.echo(list_builtin())


@click.command("coverage")
@click.argument("persona")
@click.option("--shown", type=click.IntRange(min=0), default=3, show_default=True,
              help="Unanswered messages shown per intent.")  # fmt: skip
def coverage_cmd(persona: str, shown: int) -> None:
    """How much of the stranger bank (everyday messages people send a character, written
    without any persona in mind) PERSONA's data answers, before any training: the held-out
    part's figure, and the intents nothing answers, with where to widen.

    \b
    Example:
      guppyforge coverage personas/cat.yaml
    """
    from guppyforge.dataset.coverage import coverage

    click.echo(coverage(persona).report(shown))


# --- generate (guppyforge/dataset/) ------------------------------------------------------------


@click.command()
@click.argument("persona")
@click.option(
    "-n",
    "n",
    type=int,
    default=defaults.ROWS,
    show_default=True,
    help="Rows to write.",
    metavar="N",
)
@click.option("--seed", type=SEED, default=42, show_default=True, help="Same seed, same data.")
@click.option(
    "--test-size", type=float, default=0.05, show_default=True, help="Share held out, by prompt."
)
@click.option(
    "--turns",
    default=None,
    metavar="N|A-B",
    help="User turns: N or A-B.  [default: the persona's `turns:` mix, else 1]",
)
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Processes (same data).", metavar="N"
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail, not warn, when the persona runs out or a row holds template text.",
)
@click.option("--out", "out_dir", required=True, help="Dataset folder to write.", metavar="DIR")
@click.option("--force", is_flag=True, help="Replace an existing dataset folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def generate(persona, n, seed, test_size, turns, workers, strict, out_dir, force, quiet) -> None:
    """Write a chat dataset (parquet splits, card, stats) from PERSONA.

    PERSONA is a persona file, or the name of a built-in one (guppy, cat). The folder loads with
    `datasets.load_dataset(OUT)`; no prompt of its test split appears in its train split.

    \b
    guppyforge generate personas/cat.yaml -n 20000 --seed 42 --out data/cat
    """
    import warnings

    from guppyforge.dataset.generate import (
        CapacityWarning,
        DataWarning,
        TemplateTextWarning,
        generate_dataset,
    )

    # Values are checked by generate_dataset, so a bad one is a one-line GuppyError here too.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CapacityWarning)
        warnings.simplefilter("always", TemplateTextWarning)
        warnings.simplefilter("always", DataWarning)
        result = generate_dataset(
            persona,
            out_dir,
            n=n,
            seed=seed,
            test_size=test_size,
            turns=turns,
            workers=workers,
            force=force,
            strict=strict,
            progress=not quiet,
        )
    for warning in caught:  # one line, rather than Python's "file:line: Category: ..." form
        click.echo(f"warning: {warning.message}", err=True)
    click.echo(result.summary())


@click.command("import-pairs")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, help="Persona file to write.")
@click.option("--name", help="The character's name.  [default: from the file's name]")
@click.option(
    "--format", "data_format", type=click.Choice(FORMATS), help="Shape of PAIRS, as for train."
)
@click.option("--force", is_flag=True, help="Replace --out if it is a persona of that name.")
def import_pairs_cmd(pairs, out, name, data_format, force) -> None:
    """Make a persona skeleton from question/answer pairs (a CSV a workshop typed, a JSONL):
    a topic per category column (else clustered by shared words), the pairs as its examples.

    \b
    guppyforge import-pairs qa.csv --out personas/pip.yaml --name pip
    """
    from guppyforge.cards.pairs import import_pairs

    made = import_pairs(pairs, out, name, data_format, force, say=click.echo)
    click.echo(
        f"wrote {made['out']}: {made['topics']} topics, {made['examples']} examples. "
        f"Next: guppyforge validate {made['out']}"
    )


@click.command("import-card")
@click.argument("card")
@click.option("--out", help="Persona file to write.  [default: personas/NAME.yaml]")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_card_cmd(card, out, force) -> None:
    """Turn a Character Card (V1/V2/V3 JSON, a PNG card, a .charx) into a persona skeleton.

    Card fields guppyforge does not use are kept under `extensions.character_card`.

    \b
    guppyforge import-card mochi.json --out personas/mochi.yaml
    guppyforge import-card mochi.png --out personas/mochi.yaml
    """
    from guppyforge.cards import import_card

    path = import_card(card, out, force=force)
    click.echo(f"wrote {path}. Check it: guppyforge validate {path}")


@click.command("export-card")
@click.argument("persona")
@click.option("--out", required=True, help="Card file to write (JSON V2, or PNG with --png).")
@click.option("--png", "image", help="Picture for a PNG card (V2 and V3 chunks) at --out.")
@click.option("--force", is_flag=True, help="Replace --out if it is a card guppyforge wrote.")
def export_card_cmd(persona, out, image, force) -> None:
    """Write PERSONA (a file, or a built-in's name) as a Character Card: V2 JSON, or a PNG card.

    Chat front-ends (SillyTavern...) import the card; the whole persona rides along in it, so
    `guppyforge import-card` gives the very same file back.

    \b
    guppyforge export-card personas/cat.yaml --out cat.card.json
    guppyforge export-card personas/cat.yaml --png cat.jpg --out cat.card.png
    """
    from guppyforge.cards import export_card

    click.echo(f"wrote {export_card(persona, out, png=image, force=force)}")


# --- The group: a `GuppyError` from the library becomes one `error:` line, and the commands of
# both modules are assembled here.


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


PERSONA_COMMANDS = (validate, coverage_cmd, preview, new_persona, personas, generate)
CARD_COMMANDS = (import_pairs_cmd, import_card_cmd, export_card_cmd)
for command in (*PERSONA_COMMANDS, *CARD_COMMANDS, *cli_model.COMMANDS):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="guppyforge")


if __name__ == "__main__":
    main()
