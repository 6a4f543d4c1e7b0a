"""The `guppyforge` command line: each command parses its options and calls one library function.

No logic lives here. Library modules are imported inside each command so that light commands
(validate, preview, new-persona, personas) never pay for importing torch or datasets.
"""

from __future__ import annotations

import click

from guppyforge import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


# --- persona commands (persona.py, grammar.py, starter.py) -------------------------------------


# --- generate (generate.py) --------------------------------------------------------------------


# --- train (train.py, presets.py) --------------------------------------------------------------


# --- chat and eval (chat.py, evaluate.py) ------------------------------------------------------


# --- sharing: export, cards, serve (export.py, cards.py, serve.py) -----------------------------


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="guppyforge")


if __name__ == "__main__":
    main()
