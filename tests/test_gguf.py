"""`export --to gguf` (guppyforge/apps/export/gguf.py): the file holds our weights, tokenizer and chat
template under llama.cpp's gpt2 names, and llama.cpp itself tokenizes and answers as we do.

The llama.cpp checks run llama.cpp prebuilt from npm (node-llama-cpp, driven by
tests/llama_cpp/llama.mjs; scripts/test-setup.sh installs it); everything else needs only the
`gguf` package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.export import export_run
from guppyforge.errors import GuppyError
from guppyforge.model.engine import Engine, build_prompt
from guppyforge.model.run import load_run
from guppyforge.model.tokenizer import CHAT_TEMPLATE, END, SPECIAL_TOKENS, format_chat

# Probes, and a few more prompts: seen in training, unseen, multi-turn, and one out of domain.
PROMPTS = [
    [{"role": "user", "content": "are you hungry"}],
    [{"role": "user", "content": "what is the meaning of life"}],
    [{"role": "user", "content": "do you like worms"}],
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "where do you sleep"}],
    [{"role": "user", "content": "is shrimp good"}],
    [{"role": "user", "content": "hi there"}],
    [{"role": "user", "content": "hungry?"}],
    [
        {"role": "user", "content": "do you like flakes"},
        {"role": "assistant", "content": "flakes? yes. always yes. i eat it near the plant."},
        {"role": "user", "content": "and then?"},
    ],
    [{"role": "user", "content": "Wie geht's? 🐟  fish\n\nok"}],
]
# Text the tokenizers must split the same way: spaces, newlines, digits, contractions, scripts.
TEXTS = [
    "hello world",
    "  two leading spaces, trailing   ",
    "new\nlines\n\n\nand\ttabs \n",
    "it's they're we'll I'd 1234567 3.14",
    "naïve café, 日本語のテキスト, Ελληνικά, emoji 🐟🐠!",
    "<|im_start|>user\nare you hungry<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y <|pad|><|im_start|>  z",
    "symbols: #$%&*()[]{} -- ... !!! ??",
]


@pytest.fixture(scope="module")
def exports(micro_run: Path, tmp_path_factory) -> dict[str, Path]:
    """The micro run exported in each GGUF type: {type: folder}."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        t: export_run(micro_run, "gguf", root / t, gguf_type=t)[0].parent
        for t in ("f32", "f16", "q8_0")
    }


def field(reader, key: str):
    return reader.fields[key].contents()


# --- the file ---------------------------------------------------------------------------------


def test_gguf_holds_gpt2_shape_tokenizer_and_chat_template(micro_run: Path, exports) -> None:
    run = load_run(micro_run)
    reader = gguf.GGUFReader(exports["f16"] / "model.gguf")
    cfg = run.model.cfg
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "gpt2.context_length") == cfg.context
    assert field(reader, "gpt2.block_count") == cfg.n_layer
    assert field(reader, "gpt2.attention.head_count") == cfg.n_head
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = run.tokenizer.get_vocab(with_added_tokens=True)
    assert tokens == sorted(vocab, key=vocab.get)
    types = field(reader, "tokenizer.ggml.token_type")
    assert [types[vocab[t]] for t in SPECIAL_TOKENS] == [3, 3, 3]  # CONTROL
    assert types.count(1) == len(vocab) - 3  # the rest NORMAL
    assert field(reader, "tokenizer.ggml.eos_token_id") == vocab[END]
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert len(names) == 4 + 12 * cfg.n_layer


@pytest.mark.parametrize(("kind", "tolerance"), [("f32", 0.0), ("f16", 1e-3), ("q8_0", 1e-2)])
def test_weights_come_back_from_the_file(micro_run: Path, exports, kind, tolerance) -> None:
    from guppyforge.apps.export.gguf import gguf_tensors

    ours = gguf_tensors(load_run(micro_run))
    for t in gguf.GGUFReader(exports[kind] / "model.gguf").tensors:
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours[t.name].shape)
        assert np.abs(back - ours[t.name]).max() <= tolerance, t.name
        if ours[t.name].ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32  # norms and biases stay exact


def test_modelfile_is_chatml_with_chat_defaults(exports) -> None:
    text = (exports["f16"] / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text
    assert "{{ range .Messages }}" in text.replace("{{-", "{{")
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    for line in [
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER num_ctx 128",
        "PARAMETER temperature 0.7",
    ]:
        assert line in text.splitlines()
    assert "PARAMETER top_k 50" in text.splitlines()


def test_cli_export_gguf_and_its_errors(micro_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["export", str(micro_run), "--to", "gguf", "--out", str(tmp_path / "g")]
    result = runner.invoke(cli, [*args, "--gguf-type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "model.gguf" in result.output and "Modelfile" in result.output
    result = runner.invoke(cli, args)  # again, without --force
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(
        cli,
        [
            "export",
            str(micro_run),
            "--to",
            "hf",
            "--out",
            str(tmp_path / "h"),
            "--gguf-type",
            "f16",
        ],
    )
    assert result.exit_code == 1
    assert result.output == "error: --gguf-type only applies to --to gguf.\n"


def test_activation_llama_cpp_lacks_is_refused(micro_run: Path, tmp_path: Path) -> None:
    run_dir = shutil.copytree(micro_run, tmp_path / "relu")
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["activation"] = "relu"
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(GuppyError, match="computes gelu_tanh only. Export --to hf or onnx"):
        export_run(run_dir, "gguf", tmp_path / "out")


# --- llama.cpp itself -------------------------------------------------------------------------

LLAMA_CPP = Path(__file__).resolve().parent / "llama_cpp"


@pytest.fixture(scope="module")
def llama(micro_run: Path, exports) -> dict:
    """llama.cpp's answers for every GGUF type (tests/llama_cpp/llama.mjs, one node process):
    {"llama_cpp": release, type: {"tokens", "texts", "probabilities", "greedy"}}."""
    run = load_run(micro_run)
    tok = run.tokenizer
    context = run.model.cfg.context
    persona = (micro_run / "persona.yaml").read_text(encoding="utf-8")
    texts = [*TEXTS, *(format_chat(m, add_generation_prompt=True) for m in PROMPTS), persona]
    job = {
        "models": {kind: str(folder / "model.gguf") for kind, folder in exports.items()},
        "context": context,
        "end": tok.token_to_id(END),
        "max_new_tokens": 64,
        "vocab": tok.get_vocab_size(),
        "texts": texts,
        "ids": [tok.encode(t, add_special_tokens=False).ids for t in texts],
        "prompts": [build_prompt(tok, m, context, 64)[0] for m in PROMPTS],
    }
    # node_modules from `npm ci --omit=optional --ignore-scripts --prefix tests/llama_cpp`
    # (scripts/test-setup.sh): missing, this fails with node's "Cannot find package".
    done = subprocess.run(
        [shutil.which("node") or "node", str(LLAMA_CPP / "llama.mjs")],
        input=json.dumps(job), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return job | json.loads(done.stdout)


def cleaned_spaces(text: str) -> str:
    """What llama_detokenize makes of `text` for a gpt-2 pre-tokenizer: like transformers'
    clean_up_tokenization_spaces it drops a space before ? ! . and , (its apostrophe rules
    find nothing in these texts). A reply streamed piece by piece (llama-server, Ollama) keeps
    the spaces; the token ids, checked first, are what decides the text."""
    assert " '" not in text, "llama.cpp's apostrophe rules are not mirrored here"
    return re.sub(r" (?=[?!.,])", "", text)


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(llama) -> None:
    for kind in ("f32", "f16", "q8_0"):
        for text, ids, theirs in zip(
            llama["texts"], llama["ids"], llama[kind]["tokens"], strict=True
        ):
            assert theirs == ids, (kind, text)
        for text, theirs in zip(llama["texts"], llama[kind]["texts"], strict=True):
            assert theirs == cleaned_spaces(text), (kind, text)


def test_llama_cpp_greedy_replies_match_guppyforge(micro_run: Path, llama) -> None:
    run = load_run(micro_run)
    engine = Engine.from_run(run)
    kinds = ("f32", "f16", "q8_0")
    agree, worst = dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0.0)
    for i, (messages, ids) in enumerate(zip(PROMPTS, llama["prompts"], strict=True)):
        ours = engine.reply(messages, temperature=0)
        with torch.no_grad():
            logits = run.model(torch.tensor([ids]))[0]
        ours_log = torch.log_softmax(logits.double(), -1).numpy()
        for kind in kinds:
            theirs = run.tokenizer.decode(llama[kind]["greedy"][i])
            agree[kind] += theirs == ours
            # Compared as log-probabilities (what llama.cpp hands back, a softmax of its
            # logits); a floor keeps float32's underflow to 0 out of the gap.
            probs = np.asarray(llama[kind]["probabilities"][i])
            gap = np.abs(np.log(np.maximum(probs, 1e-30)) - np.maximum(ours_log, np.log(1e-30)))
            worst[kind] = max(worst[kind], float(gap.max()))
    print(f"\nllama.cpp {llama['llama_cpp']}: greedy agreement of {len(PROMPTS)}: {agree}; "
          f"max |log-probability gap|: {worst}")  # fmt: skip
    # f32 differs from torch only by float rounding and ggml's GELU, which looks values up in
    # an f16 table (a misplaced weight gives gaps of whole units). How far that rounding goes
    # depends on the CPU's kernels: under 0.05 on 2-core AMD EPYCs, 0.15 at one position of one
    # prompt (0.01 elsewhere) on a 2-core Intel Xeon with AVX512.
    assert worst["f32"] < 0.25 and worst["f16"] < 0.25
    assert agree["f32"] == agree["f16"] == len(PROMPTS)
    # q8_0: this barely trained model's top two tokens are often close, so 8-bit weights tip
    # some of them. Asserted loosely; a broken file gives 0.
    assert worst["q8_0"] < 1.0 and agree["q8_0"] >= len(PROMPTS) // 2
