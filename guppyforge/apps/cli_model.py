"""The model commands: train, sweep, presets, chat, eval, why, export, serve."""

from __future__ import annotations

import json
import os
from dataclasses import fields

import click

from guppyforge import defaults
from guppyforge.apps import serve_limits
from guppyforge.apps.cli_options import PORT, SEED, finite
from guppyforge.persona.chat_rows import FORMATS  # the standard library alone: --help stays light
from guppyforge.train.config import TrainOptions

DEVICES = click.Choice(defaults.DEVICES)


# --- train (guppyforge/train/, guppyforge/model/gpt.py) ------------------------------------------


def train_options(command):
    """The training options, each built from its TrainOptions field (train/config.py): the
    default, the help and the choices are written there once."""
    for f in reversed(fields(TrainOptions)):
        meta = f.metadata
        if not meta.get("help"):
            continue  # not on the command line
        name = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            command = click.option(name, is_flag=True, default=f.default, help=meta["help"])(
                command
            )
            continue
        if meta["choices"]:
            kind = click.Choice(meta["choices"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type.split(" |")[0]]
        shown = meta["shown"] if f.default is None else True
        command = click.option(
            name, type=kind, default=f.default, show_default=shown, help=meta["help"]
        )(command)
    return command


@click.command()
@click.argument("data_dir", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, help="Run folder to write.")
@click.option(
    "--format",
    "data_format",
    type=click.Choice(FORMATS),
    help="Shape of DATA when its columns fit more than one.  [default: recognised]",
)
@train_options
@click.option("--force", is_flag=True, help="Replace an earlier run in --out (its files only).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--nproc",
    type=click.IntRange(1, 1024),
    help="Train in N processes on this machine (DDP: torchrun started for you).",
)
def train(data_dir, out_dir, quiet, force, data_format, nproc, **options) -> None:
    """Train a character model on DATA_DIR: a folder `guppyforge generate` wrote, or chat data
    of your own (a JSONL/JSON/CSV/parquet file or folder: messages, prompt/completion, alpaca,
    guppylm input/output/category, question/answer).

    \b
    guppyforge train data/cat --out runs/cat --preset tiny --max-steps 3000
    guppyforge train alpaca_data.json --out runs/alpaca
    guppyforge train data/cat --out runs/cat --nproc 8   # or: torchrun --nproc-per-node 8 -m guppyforge train ...
    """
    from guppyforge.errors import GuppyError
    from guppyforge.train import loop

    if nproc and nproc > 1:
        from guppyforge.train.distributed import launch
        from guppyforge.train.run_folder import check_train

        check_train(
            data_dir, out_dir, force=force, processes=nproc, **options
        )  # one error line, not N
        argv = [data_dir, "--out", out_dir] + (["--format", data_format] if data_format else [])
        argv += ["--force"] * force + ["-q"] * quiet + option_args(options)
        raise SystemExit(launch(nproc, argv))
    try:
        # Ctrl-C: a checkpoint, the resume hint, then KeyboardInterrupt, which exits 130.
        loop.train(
            data_dir,
            out_dir,
            progress=not quiet,
            force=force,
            raise_on_interrupt=True,
            data_format=data_format,
            **options,
        )
    except GuppyError:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(1) from None  # under torchrun process 0 says it, once
        raise


def option_args(options: dict) -> list[str]:
    """The training options that differ from their defaults, as command-line arguments."""
    args = []
    for f in fields(TrainOptions):
        value = options.get(f.name, f.default)
        if f.name not in options or value == f.default or value is None:
            continue
        name = f"--{f.name.replace('_', '-')}"
        args += [name] if value is True else [name, str(value)]
    return args


@click.command("sweep")
@click.argument("grid_file", required=False)
@click.option("--out", "out_dir", required=True, help="Folder for the datasets, runs and table.")
@click.option("--persona", "personas", multiple=True, help="Persona file or built-in (repeat).")
@click.option("--preset", "presets", multiple=True, help="Model shape (repeat).  [default: tiny]")
@click.option(
    "--lr", "lrs", type=finite(min=0, min_open=True), multiple=True, help="Peak rate (repeat)."
)
@click.option("--seed", "seeds", type=SEED, multiple=True, help="Seed (repeat).  [default: 0]")
@click.option("-n", "conversations", type=click.IntRange(min=1), help="Conversations per persona.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Steps per job.")
@click.option("--max-minutes", type=finite(min=0, min_open=True), help="Time budget per job.")
@click.option("--cpus", type=click.IntRange(min=1), help="Cores for a local Ray.  [default: all]")
@click.option("--cpus-per-job", type=click.IntRange(min=1), help="Cores each job takes.")
@click.option("--address", help="A Ray cluster to run on (ray://HOST:10001, or auto).")
@click.option("--force", is_flag=True, help="Replace an earlier sweep's files in --out.")
def sweep_cmd(grid_file, out_dir, cpus, address, force, **given) -> None:
    """Train a grid of jobs (personas x presets x lrs x seeds) as Ray tasks; one table at the end.

    Needs the cluster extra: pip install 'guppyforge[cluster]'. GRID_FILE is a small YAML file
    (personas, presets, lrs, seeds, conversations, train: {OPTION: VALUE}); a flag replaces its key.

    \b
    guppyforge sweep --persona cat --persona guppy --seed 0 --seed 1 --out sweeps/pets
    guppyforge sweep grid.yaml --out sweeps/lr --address auto
    """
    from guppyforge.apps.sweep import Grid, read_grid, run_sweep

    grid = read_grid(grid_file) if grid_file else Grid(personas=[])
    for key in ("personas", "presets", "lrs", "seeds"):
        if given[key]:
            setattr(grid, key, list(given[key]))
    if given["conversations"]:
        grid.conversations = given["conversations"]
    if given["cpus_per_job"]:
        grid.cpus_per_job = given["cpus_per_job"]
        grid.origin.pop("cpus_per_job", None)  # the flag set it, not the grid file
    for key in ("max_steps", "max_minutes"):
        if given[key] is not None:
            grid.train[key] = given[key]
    run_sweep(grid, out_dir, cpus=cpus, address=address, force=force, say=click.echo)


@click.command()
def presets() -> None:
    """List the model shapes and where their parameters live.

    \b
    guppyforge presets
    """
    from guppyforge.model.gpt import presets_table

    click.echo(presets_table())


# --- chat and eval (apps/chat.py, evaluate/score.py) ---------------------------------------


@click.command("chat", context_settings={"show_default": True})
@click.argument("run_dir")
@click.option("--prompt", help="Print one reply to this message and exit (for scripts).")
@click.option("--temperature", type=finite(min=0), default=defaults.TEMPERATURE, help="0: greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=defaults.TOP_K, help="0: no cut.")
@click.option("--top-p", type=finite(0, 1, min_open=True), default=1.0, help="Nucleus.")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=defaults.MAX_NEW_TOKENS,
    help="Reply length cap.",
)
@click.option("--seed", type=SEED, help="Same seed, same replies.  [default: random]")
@click.option("--show-probs", is_flag=True, help="Each token's top 5, before/after temperature.")
@click.option(
    "--show-attention", is_flag=True, help="Each token's 3 most attended earlier tokens, per layer."
)
@click.option("--trace", is_flag=True, help="After each reply, the persona lines it came from.")
@click.option("--device", type=DEVICES, default="auto", help="Where to run.")
def chat_cmd(run_dir, prompt, device, show_probs, show_attention, trace, **options) -> None:
    """Talk to the character in RUN_DIR (/why traces the last reply, /reset, /quit).

    \b
    guppyforge chat runs/cat
    guppyforge chat runs/cat --prompt "are you hungry" --temperature 0
    """
    from guppyforge.apps.chat import chat

    chat(run_dir, prompt, device, show_probs, trace, show_attention, **options)


@click.command("eval", context_settings={"show_default": True})
@click.argument("run_dir")
@click.option("--persona", help="Persona with the probes.  [default: RUN_DIR/persona.yaml]")
@click.option("--data", help="Dataset folder or chat data file.  [default: the run's own]")
@click.option(
    "--format", "data_format", type=click.Choice(FORMATS), help="Shape of --data, as for train."
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=defaults.EVAL_SAMPLES,
    help="Replies per probe.",
)
@click.option(
    "--topic-samples",
    type=click.IntRange(min=0),
    default=defaults.EVAL_TOPIC_SAMPLES,
    help="Test prompts per topic, traced.",
)
@click.option(
    "--probes", help="Blind probe file.  [default: a built-in's personas/blind/NAME.yaml, if any]"
)
@click.option(
    "--offtopic-samples",
    type=click.IntRange(min=0),
    default=defaults.EVAL_OFFTOPIC_SAMPLES,
    help="Held-out off-topic prompts asked, one reply each.",
)
@click.option("--json", "json_path", help="Also write the figures to this JSON file.")
@click.option("--force", is_flag=True, help="Replace an earlier --json result.")
@click.option("--min-pass", type=finite(0, 1), help="Exit 1 below this pass rate (0-1).")
@click.option("--seed", type=SEED, default=0, help="Same seed, same replies.")
@click.option("--temperature", type=finite(min=0), default=defaults.TEMPERATURE, help="Sampling.")
@click.option("--device", type=DEVICES, default="auto", help="Where to run.")
def eval_cmd(run_dir, json_path, min_pass, **options) -> None:
    """Score RUN_DIR: perplexity; pass rates on its own probes, on them perturbed, on a blind
    probe set and on held-out off-topic prompts; memorised rate, distinct-2, composition.

    \b
    guppyforge eval runs/cat --samples 5 --json eval.json --min-pass 0.7
    guppyforge eval runs/cat --probes my-blind-probes.yaml
    """
    from guppyforge.evaluate.score import run_eval

    run_eval(run_dir, json_path, min_pass, **options)


@click.command("why")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("reply")
@click.option("--data", help="Dataset folder or chat data file.  [default: the run's own]")
@click.option(
    "--format", "data_format", type=click.Choice(FORMATS), help="Shape of --data, as for train."
)
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
def why_cmd(run_dir, reply, data, data_format, as_json) -> None:
    """Trace REPLY back to the training replies and persona lines that taught it.

    \b
    guppyforge why runs/cat "tuna? finally. i was wasting away on the sofa."
    """
    from guppyforge.apps.text import format_trace
    from guppyforge.evaluate.trace import why

    trace = why(
        run_dir, reply, data, note=lambda line: click.echo(line, err=True), data_format=data_format
    )
    if as_json:
        click.echo(json.dumps(trace.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_trace(trace))


# --- sharing: export, cards, serve (apps/export/, cards/, apps/serve.py) ----------------


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--to",
    "target",
    type=click.Choice(defaults.EXPORT_TARGETS),
    required=True,
    help="Format to write.",
)
@click.option("--out", "out_dir", required=True, help="Folder to write the export into.")
@click.option("--int8", is_flag=True, help="onnx: also write a dynamic-int8 model.int8.onnx.")
@click.option("--fp32", is_flag=True, help="web: fp32 weights instead of int8 (larger).")
@click.option(
    "--gguf-type",
    type=click.Choice(defaults.GGUF_TYPES),
    help=f"gguf: weights.  [default: {defaults.GGUF_TYPE}]",
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --out.")
def export_cmd(run_dir, target, out_dir, int8, fp32, gguf_type, force) -> None:
    """Export RUN_DIR: transformers (hf), ONNX, GGUF (llama.cpp, Ollama), or a web page (web).

    \b
    guppyforge export runs/cat --to hf --out export/cat-hf
    guppyforge export runs/cat --to onnx --out export/cat-onnx --int8
    guppyforge export runs/cat --to gguf --out export/cat-gguf
    guppyforge export runs/cat --to web --out export/cat-web
    """
    from guppyforge.apps.export import export_run

    options = dict(force=force, int8=int8, fp32=fp32, gguf_type=gguf_type)
    for path in export_run(run_dir, target, out_dir, **options):
        click.echo(f"wrote {path}")
    if target == "web":
        click.echo(f"open it: python -m http.server -d {out_dir}, then http://localhost:8000")


def serve_options(command):
    """`--max-...`: one option per Limits field (apps/serve_limits.py), its default and help
    written there once, as train's are from TrainOptions."""
    for f in reversed(serve_limits.OPTIONS):
        name = f"--{f.name.replace('_', '-')}"
        kind = click.IntRange(1)
        command = click.option(name, type=kind, default=f.default, show_default=True,
                               help=f.metadata["help"])(command)  # fmt: skip
    return command


@click.command("serve")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default=serve_limits.HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=PORT, default=serve_limits.PORT, show_default=True, help="Port (0: any free)."
)
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option(
    "--api-key",
    envvar="GUPPYFORGE_API_KEY",
    help="Bearer key every /v1 request must send; required beyond 127.0.0.1.",
)
@serve_options
@click.option(
    "--timeout",
    type=finite(min=0.1),
    default=serve_limits.TIMEOUT,
    show_default=True,
    help="Seconds a client may take to send a request.",
)
def serve_cmd(run_dir, host, port, device, api_key, timeout, **limits) -> None:
    """Serve RUN_DIR: an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models) and a chat page at /. Needs the serve extra: pip install 'guppyforge[serve]'.

    \b
    guppyforge serve runs/cat
    # then open http://127.0.0.1:8000/ or, from any OpenAI client:
    # OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    """
    serve_limits.check_exposure(host, api_key)  # before torch and the model load: seconds sooner
    from guppyforge.apps.serve import serve  # without the serve extra: one line saying so

    limits = serve_limits.Limits(**limits, body_timeout=timeout, head_timeout=timeout)
    serve(run_dir, host, port, device, api_key=api_key, limits=limits)


# What cli.py adds to the group.
COMMANDS = (train, sweep_cmd, presets, chat_cmd, eval_cmd, why_cmd, export_cmd, serve_cmd)
