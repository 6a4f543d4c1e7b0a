"""`guppyforge export`: a run becomes a folder that transformers or onnxruntime loads.

What a user would notice: the exported model computes the same logits, and says the same thing
to "are you hungry" as `guppyforge chat` does at temperature 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import micro_conversations

from guppyforge.apps.cli import cli
from guppyforge.apps.export import export_run
from guppyforge.errors import GuppyError
from guppyforge.files import write_marker
from guppyforge.model.engine import Engine, build_prompt
from guppyforge.model.gpt import GPT, PRESETS
from guppyforge.model.run import load_run
from guppyforge.model.tokenizer import (
    END,
    encode_conversations,
    format_chat,
    save_tokenizer,
    train_tokenizer,
)
from guppyforge.train.run_folder import save_weights

# transformers must only ever read the local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = [{"role": "user", "content": "are you hungry"}]


def random_run(path: Path, activation: str) -> Path:
    """An untrained run folder (random weights) with the given activation: enough for logits."""
    path.mkdir(parents=True)
    texts = [format_chat([{"role": "user", "content": f"hello {i}"}]) for i in range(20)]
    tok = train_tokenizer(texts, 300)
    cfg = replace(PRESETS["micro"], vocab_size=tok.get_vocab_size(), activation=activation)
    with torch.random.fork_rng():  # leave the global RNG as other tests expect it
        torch.manual_seed(0)
        save_weights(GPT(cfg), path / "model.safetensors")
    save_tokenizer(tok, path, cfg.context)
    (path / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    return path


@pytest.fixture(scope="module")
def run_dir(micro_run) -> Path:
    return Path(micro_run)


@pytest.fixture(scope="module")
def hf_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--to", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def onnx_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_run(run_dir, "onnx", out, int8=True)
    return out


def greedy_reply(run, prompt_text: str) -> str:
    return Engine.from_run(run).reply([{"role": "user", "content": prompt_text}], temperature=0)


# --- transformers ------------------------------------------------------------------------------


def test_hf_folder_has_the_files_transformers_reads(hf_dir, run_dir):
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.0
    assert "chat_template" in json.loads((hf_dir / "tokenizer_config.json").read_text())
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == load_run(run_dir).tokenizer.token_to_id(END)


def test_hf_logits_match_ours(run_dir, hf_dir):
    from transformers import AutoModelForCausalLM

    theirs, info = AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    # Every tensor found its place: nothing left randomly initialised, nothing ignored.
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours = load_run(run_dir).model
    x = torch.randint(
        0, ours.cfg.vocab_size, (3, ours.cfg.context), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (theirs.eval()(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_hf_greedy_generate_says_what_chat_says(run_dir, hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    inputs = tok.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    # Only greedy is asked for: where to stop (<|im_end|>, the context) is generation_config's.
    out = model.generate(**inputs, do_sample=False)
    theirs = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    ours = greedy_reply(load_run(run_dir), "are you hungry")
    assert ours.strip(), "the fixture model should say something"
    assert theirs == ours
    printed = CliRunner().invoke(
        cli, ["chat", str(run_dir), "--prompt", "are you hungry", "--temperature", "0"]
    )
    assert printed.exit_code == 0 and printed.output == theirs + "\n"


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_hf_maps_every_activation(activation, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = random_run(tmp_path / "run", activation)
    export_run(run_dir, "hf", tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_run(run_dir).model
    x = torch.randint(0, ours.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)).abs().max().item() < 1e-4


# --- ONNX --------------------------------------------------------------------------------------


def onnx_feed(session, ids: np.ndarray, past: list | None = None) -> dict:
    """The inputs for new tokens `ids` after `past` (a previous run's present.* outputs)."""
    caches = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if past is None:  # the prompt: an empty cache (past length 0)
        past = [np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32) for i in caches]
    total = past[0].shape[2] + ids.shape[1]
    feed = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], total), np.int64)}
    return feed | {i.name: p for i, p in zip(caches, past, strict=True)}


def onnx_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], onnx_feed(session, ids))[0]


def onnx_greedy(path: Path, tokenizer, prompt_ids: list[int], context: int, max_new: int = 64):
    """Greedy decoding with the ONNX graph: the prompt once, then one token per step (KV cache)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, end = list(prompt_ids), tokenizer.token_to_id(END)
    x, past = np.array([ids], dtype=np.int64), None
    for _ in range(max_new):
        logits, *past = session.run(None, onnx_feed(session, x, past))
        token = int(logits[0, -1].argmax())
        if token == end:
            break
        ids.append(token)
        if len(ids) > context:  # as `chat`: a token is fed only while positions remain
            break
        x = np.array([[token]], dtype=np.int64)
    return tokenizer.decode(ids[len(prompt_ids) :])


def test_onnx_describes_its_inputs_and_outputs(onnx_dir, run_dir):
    io = json.loads((onnx_dir / "onnx_io.json").read_text())
    assert io["inputs"][0]["name"] == "input_ids" and io["outputs"][0]["name"] == "logits"
    assert io["models"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert io["max_sequence"] == load_run(run_dir).model.cfg.context
    assert (onnx_dir / "tokenizer.json").is_file()


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 128)])
def test_onnx_fp32_logits_match_torch_for_any_batch_and_length(onnx_dir, run_dir, shape):
    model = load_run(run_dir).model
    x = torch.randint(0, model.cfg.vocab_size, shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x).numpy()
    diff = np.abs(onnx_logits(onnx_dir / "model.onnx", x.numpy()) - ours).max()
    assert diff < 1e-4, diff


# Probe-like prompts: the fixture's own phrasings, unseen ones, and one it has no answer for.
PROBES = [
    "are you hungry",
    "hello",
    "do you like worms",
    "what do you eat",
    "where do you sleep",
    "hungry?",
    "is bugs good",
    "hi there",
    "where do you live",
    "what is the meaning of life",
]


def test_onnx_int8_mostly_picks_the_same_tokens_as_fp32(onnx_dir, run_dir):
    # Teacher-forced: at every reply token of the fixture's conversations, does int8 put the
    # same token on top as torch? Measured on this fixture: 99.6 %, and 100 % wherever fp32
    # leads by more than one logit. Misses are near-ties (which of four foods to name).
    run = load_run(run_dir)
    ids, masks = encode_conversations(run.tokenizer, micro_conversations("train"))
    same = total = sure_same = sure_total = 0
    for seq, mask in zip(ids, masks, strict=True):
        with torch.no_grad():
            ours = run.model(torch.tensor([seq]))[0, :-1].numpy()
        theirs = onnx_logits(onnx_dir / "model.int8.onnx", np.array([seq]))[0, :-1]
        on_reply = np.array(mask[1:], dtype=bool)
        agree = (ours.argmax(-1) == theirs.argmax(-1))[on_reply]
        top2 = np.sort(ours, axis=-1)[on_reply][:, -2:]
        sure = top2[:, 1] - top2[:, 0] > 1.0
        same, total = same + agree.sum(), total + agree.size
        sure_same, sure_total = sure_same + agree[sure].sum(), sure_total + sure.sum()
    assert same / total >= 0.97, same / total
    assert sure_same == sure_total > 0


def test_onnx_int8_gives_the_same_greedy_replies(onnx_dir, run_dir):
    # Measured on this fixture: 10 of 10 replies identical to `guppyforge chat --temperature 0`.
    # One near-tie flipping would change a whole reply, so allow one.
    run = load_run(run_dir)
    context = run.model.cfg.context
    agree = 0
    for text in PROBES:
        messages = [{"role": "user", "content": text}]
        ids, _ = build_prompt(run.tokenizer, messages, context, 64)
        int8 = onnx_greedy(onnx_dir / "model.int8.onnx", run.tokenizer, ids, context)
        agree += int8 == greedy_reply(run, text)
    assert agree >= len(PROBES) - 1, f"{agree}/{len(PROBES)}"


# --- the command line --------------------------------------------------------------------------


def test_export_refuses_to_overwrite_without_force(run_dir, hf_dir):
    again = CliRunner().invoke(cli, ["export", str(run_dir), "--to", "hf", "--out", str(hf_dir)])
    assert again.exit_code == 1 and "--force" in again.output
    assert "Traceback" not in again.output


def test_export_refuses_to_write_into_the_run_itself(run_dir):
    with pytest.raises(GuppyError, match="run folder itself"):
        export_run(run_dir, "hf", run_dir, force=True)


def test_int8_is_only_for_onnx(run_dir, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", str(run_dir), "--to", "hf", "--out", str(tmp_path / "x"), "--int8"]
    )
    assert result.exit_code == 1 and "error: --int8" in result.output


def test_force_replaces_an_export_and_only_its_files(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.int8.onnx").write_text("stale, from an earlier onnx export")
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(GuppyError, match="no .guppyforge.json"):  # nothing proves it is ours
        export_run(run_dir, "hf", out, force=True)
    write_marker(out, "export", ["model.int8.onnx"])  # what the earlier export left
    with pytest.raises(GuppyError, match="--force"):
        export_run(run_dir, "hf", out)
    export_run(run_dir, "hf", out, force=True)
    assert not (out / "model.int8.onnx").exists()  # would not match the new export
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert (out / "model.safetensors").is_file()
