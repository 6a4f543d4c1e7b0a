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
# Files are checked by the library, not click.Path(exists=True): a missing file must print one
# `error:` line like every other user error, not click's three-line usage message.


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--target", type=click.IntRange(min=1), default=60_000, show_default=True,
    help="Unique conversations the persona should be able to fill.",
)  # fmt: skip
def validate(files: tuple[str, ...], target: int) -> None:
    """Check persona files and show how many distinct conversations each can make.

    \b
    Example:
      guppyforge validate personas/cat.yaml --target 20000
    """
    from guppyforge.persona import validate_persona
    from guppyforge.persona_report import capacity_table

    failed = False
    for file in files:
        report = validate_persona(file, target)
        for line in report.errors:
            click.echo(f"error: {line}", err=True)
        for line in report.warnings:
            click.echo(f"warning: {line}", err=True)
        failed = failed or bool(report.errors)
        if not report.errors:
            click.echo(f"{file}: ok")
            click.echo(capacity_table(report.capacity))
    if failed:
        raise SystemExit(1)


@cli.command()
@click.argument("file", type=click.Path(path_type=str))
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Conversations to show.")  # fmt: skip
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same text.")
@click.option("--turns", type=click.IntRange(min=1), default=1, show_default=True,
              help="Turns per conversation.")  # fmt: skip
def preview(file: str, count: int, topic: str | None, seed: int, turns: int) -> None:
    """Print sample conversations from a persona, with the YAML lines that made them.

    \b
    Example:
      guppyforge preview personas/cat.yaml -n 5 --topic food --turns 2
    """
    from guppyforge.persona import load_persona
    from guppyforge.persona_report import format_conversation
    from guppyforge.sampling import Sampler

    persona = load_persona(file)
    sampler = Sampler(persona, seed=seed)
    for i in range(count):
        click.echo(format_conversation(sampler.conversation(i, turns, topic), persona.display_name))


@cli.command("new-persona")
@click.argument("name")
@click.option("--from", "source", default=None, help="Built-in persona name or file to copy.")
@click.option("--dir", "directory", default=".", show_default=True, help="Where to write.")
def new_persona(name: str, source: str | None, directory: str) -> None:
    """Write NAME.yaml: a commented starter character to edit (or a copy of another persona).

    \b
    Examples:
      guppyforge new-persona mochi             # a starter cat called Mochi
      guppyforge new-persona goldie --from guppy --dir personas
    """
    from guppyforge.starter import write_persona

    path = write_persona(name, source, directory)
    click.echo(f"wrote {path}. Next: guppyforge validate {path}")


@cli.command()
def personas() -> None:
    """List the built-in personas.

    \b
    Example:
      guppyforge personas
      guppyforge new-persona mine --from cat   # start from one of them
    """
    from guppyforge.persona_report import list_builtin

    click.echo(list_builtin())


# --- generate (generate.py) --------------------------------------------------------------------


@cli.command()
@click.argument("persona")
@click.option(
    "-n", "n", type=int, default=60_000, show_default=True, help="Rows to write.", metavar="N"
)
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same data.")
@click.option(
    "--test-size", type=float, default=0.05, show_default=True, help="Share held out, by prompt."
)
@click.option(
    "--turns", default="1", show_default=True, help="User turns: N or A-B.", metavar="N|A-B"
)
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Processes (same data).", metavar="N"
)
@click.option("--strict", is_flag=True, help="Fail, not warn, when the persona runs out.")
@click.option("--out", "out_dir", required=True, help="Dataset folder to write.", metavar="DIR")
@click.option("--force", is_flag=True, help="Replace an existing dataset folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def generate(persona, n, seed, test_size, turns, workers, strict, out_dir, force, quiet) -> None:
    """Write a chat dataset (parquet splits, card, stats) from PERSONA.

    PERSONA is a persona file, or the name of a built-in one (guppy, cat). The folder loads with
    `datasets.load_dataset(OUT)`; no prompt of its test split appears in its train split.

    \b
    guppyforge generate personas/cat.yaml -n 60000 --seed 42 --out data/cat
    """
    import warnings

    from guppyforge.generate import CapacityWarning, generate_dataset

    # Values are checked by generate_dataset, so a bad one is a one-line GuppyError here too.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CapacityWarning)
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


# --- train (train.py, presets.py) --------------------------------------------------------------


@cli.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, help="Run folder to write.")
@click.option("--preset", help="Model shape (see `guppyforge presets`).  [default: guppy-9m]")
@click.option("--max-steps", type=int, help="Steps; fixes the schedule.  [default: 3 epochs]")
@click.option("--epochs", type=float, help="Passes over the data when --max-steps is not given.")
@click.option("--max-minutes", type=float, help="Time budget; stops with a checkpoint.")
@click.option("--stop-after", type=int, help="Stop (with a checkpoint) after this step.")
@click.option("--batch-size", type=int, help="Rows of `context` tokens per step.  [default: 16]")
@click.option("--lr", type=float, help="Peak learning rate.  [default: 0.001]")
@click.option("--eval-every", type=int, help="Steps between evals.  [default: max-steps / 10]")
@click.option("--seed", type=int, help="Same seed, same run.  [default: 0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[default: auto]")
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), help="[default: auto]"
)
@click.option("--compile", "compile_", is_flag=True, default=None, help="Use torch.compile.")
@click.option("--resume", is_flag=True, default=None, help="Continue from checkpoints/last.pt.")
@click.option("--loss-on", type=click.Choice(["replies", "all"]), help="[default: replies]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train(data_dir, out_dir, compile_, quiet, **options) -> None:
    """Train a character model on DATA_DIR (written by `guppyforge generate`).

    \b
    guppyforge train data/cat --out runs/cat --preset tiny --max-steps 3000
    """
    from guppyforge.trainer import train as train_run

    options = {k: v for k, v in options.items() if v is not None}
    if compile_:
        options["compile"] = True
    train_run(data_dir, out_dir, progress=not quiet, **options)


@cli.command()
def presets() -> None:
    """List the model shapes and where their parameters live.

    \b
    guppyforge presets
    """
    from guppyforge.preset_table import presets_table

    click.echo(presets_table())


# --- chat and eval (chat.py, evaluate.py) ------------------------------------------------------


DEVICES = click.Choice(["auto", "cpu", "cuda", "mps"])


@cli.command("chat", context_settings={"show_default": True})
@click.argument("run_dir")
@click.option("--prompt", help="Print one reply to this message and exit (for scripts).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, help="0: greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=50, help="0: no cut.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="Nucleus.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, help="Reply length cap.")
@click.option("--seed", type=int, help="Same seed, same replies.  [default: random]")
@click.option("--show-probs", is_flag=True, help="Each token's top 5, before/after temperature.")
@click.option("--device", type=DEVICES, default="auto", help="Where to run.")
@click.option("--int8", is_flag=True, help="Int8 weights: ~3x faster on a CPU, replies may differ.")
def chat_cmd(run_dir, prompt, device, show_probs, int8, **options) -> None:
    """Talk to the character in RUN_DIR (/reset starts over, /quit leaves).

    \b
    guppyforge chat runs/cat
    guppyforge chat runs/cat --prompt "are you hungry" --temperature 0
    """
    from guppyforge.chat import chat

    chat(run_dir, prompt, device, show_probs, int8, **options)


@cli.command("eval", context_settings={"show_default": True})
@click.argument("run_dir")
@click.option("--persona", help="Persona with the probes.  [default: RUN_DIR/persona.yaml]")
@click.option("--data", help="Dataset folder.  [default: the one the run trained on]")
@click.option("--samples", type=click.IntRange(min=1), default=5, help="Replies per probe.")
@click.option("--json", "json_path", help="Also write the figures to this JSON file.")
@click.option("--min-pass", type=click.FloatRange(0, 1), help="Exit 1 below this pass rate (0-1).")
@click.option("--seed", type=int, default=0, help="Same seed, same replies.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, help="Sampling.")
@click.option("--device", type=DEVICES, default="auto", help="Where to run.")
def eval_cmd(run_dir, json_path, min_pass, **options) -> None:
    """Score RUN_DIR: perplexity, probe pass rate, memorised rate, distinct-2.

    \b
    guppyforge eval runs/cat --samples 5 --json eval.json --min-pass 0.7
    """
    from guppyforge.evaluate import run_eval

    run_eval(run_dir, json_path, min_pass, **options)


# --- sharing: export, cards, serve (export.py, cards.py, serve.py) -----------------------------


# export


@cli.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--to",
    "target",
    type=click.Choice(["hf", "onnx", "gguf"]),
    required=True,
    help="Format to write.",
)
@click.option("--out", "out_dir", required=True, help="Folder to write the export into.")
@click.option("--int8", is_flag=True, help="onnx: also write a dynamic-int8 model.int8.onnx.")
@click.option(
    "--gguf-type",
    type=click.Choice(["f16", "f32", "q8_0"]),
    help="gguf: weight type.  [default: f16]",
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --out.")
def export_cmd(run_dir, target, out_dir, int8, gguf_type, force) -> None:
    """Export RUN_DIR for other tools: transformers GPT-2 (hf), ONNX, or GGUF (llama.cpp, Ollama).

    \b
    guppyforge export runs/cat --to hf --out export/cat-hf
    guppyforge export runs/cat --to onnx --out export/cat-onnx --int8
    guppyforge export runs/cat --to gguf --out export/cat-gguf
    """
    from guppyforge.export import export_run

    paths = export_run(run_dir, target, out_dir, force=force, int8=int8, gguf_type=gguf_type)
    for path in paths:
        click.echo(f"wrote {path}")


# cards


@cli.command("import-card")
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


@cli.command("export-card")
@click.argument("persona")
@click.option("--out", required=True, help="Card file to write (JSON V2, or PNG with --png).")
@click.option("--png", "image", help="Picture for a PNG card (V2 and V3 chunks) at --out.")
def export_card_cmd(persona, out, image) -> None:
    """Write PERSONA (a file, or a built-in's name) as a Character Card: V2 JSON, or a PNG card.

    Chat front-ends (SillyTavern...) import the card; the whole persona rides along in it, so
    `guppyforge import-card` gives the very same file back.

    \b
    guppyforge export-card personas/cat.yaml --out cat.card.json
    guppyforge export-card personas/cat.yaml --png cat.jpg --out cat.card.png
    """
    from guppyforge.cards import export_card

    click.echo(f"wrote {export_card(persona, out, png=image)}")


# serve


@cli.command("serve")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
)
def serve_cmd(run_dir, host, port, device) -> None:
    """Serve RUN_DIR over an OpenAI-compatible API (/v1/chat/completions, /v1/models).

    \b
    guppyforge serve runs/cat
    # then, from any OpenAI client:
    # OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    """
    from guppyforge.serve import serve

    serve(run_dir, host, port, device)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="guppyforge")


if __name__ == "__main__":
    main()
