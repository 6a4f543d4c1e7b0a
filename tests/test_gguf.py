"""`export --to gguf` (guppyforge/apps/export/gguf.py): the file holds our weights, tokenizer and chat
template under llama.cpp's gpt2 names, and llama.cpp itself tokenizes and answers as we do.

The llama.cpp checks need llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp
from source) and are skipped without it; everything else needs only the `gguf` package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import llama_cpp  # scripts/test-setup.sh installs it (a wheel it builds once)
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


def open_llama(path: Path, context: int):
    # logits_all: keep every position's logits, so greedy picks can be read back as numbers.
    return llama_cpp.Llama(str(path), n_ctx=context, n_threads=1, logits_all=True, verbose=False)


def llama_greedy(
    llm, ids: list[int], end: int, context: int, max_new_tokens: int = 64
) -> list[int]:
    """Greedy decoding in llama.cpp with model.generate's stop rules (end token, context)."""
    llm.reset()
    out, pending = [], ids
    for _ in range(max_new_tokens):
        if llm.n_tokens + len(pending) > context:
            break
        llm.eval(pending)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token == end:
            break
        out.append(token)
        pending = [token]
    return out


@pytest.fixture(scope="module")
def llamas(micro_run: Path, exports):
    # llama.cpp rounds n_ctx up (it warns "n_ctx_seq (256) > n_ctx_train (128)"); decoding
    # still stops at the model's context, like model.generate, so no position runs past it.
    context = load_run(micro_run).model.cfg.context
    llms = {kind: open_llama(folder / "model.gguf", context) for kind, folder in exports.items()}
    yield llms
    for llm in llms.values():
        llm.close()  # now, not in __del__ at interpreter exit (where llama-cpp-python errs)


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(micro_run: Path, llamas) -> None:
    tok = load_run(micro_run).tokenizer
    persona = (micro_run / "persona.yaml").read_text(encoding="utf-8")
    llm = llamas["f32"]
    conversations = [format_chat(m, add_generation_prompt=True) for m in PROMPTS]
    for text in [*TEXTS, *conversations, persona]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids, special=True) == text.encode(), text


def test_llama_cpp_greedy_replies_match_guppyforge(micro_run: Path, llamas) -> None:
    run = load_run(micro_run)
    context, end = run.model.cfg.context, run.tokenizer.token_to_id(END)
    agree, worst = dict.fromkeys(llamas, 0), dict.fromkeys(llamas, 0.0)
    for messages in PROMPTS:
        ours = Engine.from_run(run).reply(messages, temperature=0)
        ids, _ = build_prompt(run.tokenizer, messages, context, 64)
        with torch.no_grad():
            logits = run.model(torch.tensor([ids]))[0].numpy()
        for kind, llm in llamas.items():
            theirs = run.tokenizer.decode(llama_greedy(llm, ids, end, context))
            agree[kind] += theirs == ours
            llm.reset()
            llm.eval(ids)
            gap = float(np.abs(llm.scores[: len(ids)] - logits).max())
            worst[kind] = max(worst[kind], gap)
    print(f"\ngreedy agreement of {len(PROMPTS)}: {agree}; max |logit gap|: {worst}")
    # f32 differs from torch only by float rounding and ggml's GELU, which looks values up in
    # an f16 table (measured gap 0.013; a misplaced weight gives gaps of whole units).
    assert worst["f32"] < 0.05 and worst["f16"] < 0.05
    assert agree["f32"] == agree["f16"] == len(PROMPTS)
    # q8_0 (measured 8 of 10, gap 0.36): this barely trained model's top two tokens are often
    # close, so 8-bit weights tip some of them. Asserted loosely; a broken file gives 0.
    assert worst["q8_0"] < 1.0 and agree["q8_0"] >= len(PROMPTS) // 2
