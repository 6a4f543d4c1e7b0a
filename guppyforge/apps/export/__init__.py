"""`guppyforge export`: turn a run folder into a folder other tools load.

One target, one module:
- `hf` (hf.py): a GPT-2 folder that `transformers` loads with `from_pretrained`.
- `onnx` (onnx.py): model.onnx (+ model.int8.onnx) for onnxruntime and friends.
- `gguf` (gguf.py): model.gguf + an Ollama Modelfile, for llama.cpp and Ollama.
- `web` (web.py, apps/page/): a static page that chats with the character in the browser.

This module picks the target and checks the output folder. Every target writes into a staging
folder first (ownership.Claim.staged): a full disk or a crash leaves the earlier export as it was.
"""

from __future__ import annotations

from pathlib import Path

from guppyforge.apps.export.gguf import check_gguf_type, export_gguf
from guppyforge.apps.export.hf import export_hf
from guppyforge.apps.export.onnx import export_onnx
from guppyforge.apps.export.web import export_web
from guppyforge.defaults import EXPORT_TARGETS, GGUF_TYPE
from guppyforge.errors import GuppyError
from guppyforge.files import Claim, check_folder
from guppyforge.model.run import load_run

# Every file an export may write: a user's file under one of these names is refused, never
# replaced. With --force only the files the earlier export's marker lists are replaced.
OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.onnx",
    "model.int8.onnx",
    "onnx_io.json",
    "index.html",
    "ui.js",
    "browser.js",
    "page.json",
    "character/*",  # web: the model's folder and the JavaScript runtime
    "character/onnx/*",
    "runtime/*",
    "model.gguf",
    "Modelfile",
)


def export_run(
    run_dir: str | Path,
    to: str,
    out: str | Path,
    *,
    force: bool = False,
    int8: bool = False,
    fp32: bool = False,
    gguf_type: str | None = None,
) -> list[Path]:
    """Export the run in `run_dir` to `out` as `to` (one of EXPORT_TARGETS); return the files written."""
    if to not in EXPORT_TARGETS:
        raise GuppyError(f"--to: unknown target '{to}'. Choose one of: {', '.join(EXPORT_TARGETS)}")
    if int8 and to == "hf":
        raise GuppyError("--int8 only applies to --to onnx (transformers loads fp32 weights).")
    if fp32 and to != "web":
        raise GuppyError("--fp32 only applies to --to web (its weights are int8 by default).")
    if gguf_type is not None and to != "gguf":
        raise GuppyError("--gguf-type only applies to --to gguf.")
    if to == "gguf":  # before any folder is made: a missing package or a typo fails first
        check_gguf_type(gguf_type)
    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir)
    claim = prepare_out_dir(run_dir, out, force)
    with claim.staged() as stage:
        if to == "hf":
            written = export_hf(run, stage)
        elif to == "web":
            written = export_web(run, stage, int8=not fp32)
        elif to == "gguf":
            written = export_gguf(run, stage, gguf_type or GGUF_TYPE)
        else:
            written = export_onnx(run, stage, int8=int8)
    return [out / path.relative_to(stage) for path in written]


def prepare_out_dir(run_dir: Path, out: Path, force: bool, files=OUTPUT_FILES) -> Claim:
    """Check `out` before any work (guppyforge.files): an earlier export is replaced only
    with `force`, the user's own files never. A new target passes its `files`."""
    if out.resolve() == run_dir.resolve():
        # The GPT-2 config.json would replace the run's own config.json: the run would be lost.
        raise GuppyError(f"--out {out}: that is the run folder itself. Choose another folder.")
    return check_folder(out, "export", force, inputs=[run_dir], files=files)
