"""Export a run as one GGUF file for llama.cpp and Ollama, plus an Ollama Modelfile.

    guppyforge export runs/cat --to gguf --out export/cat-gguf
    ollama create cat -f export/cat-gguf/Modelfile && ollama run cat

The file uses llama.cpp's `gpt2` architecture: our model is GPT-2 shaped, so this is a renaming
(one table, like hf.py's) and nothing else. `nn.Linear` stores weights as (out, in), and
numpy's row-major (out, in) is exactly GGUF's (ne0 = in, ne1 = out), so unlike transformers'
Conv1D nothing is transposed. The tokenizer and the ChatML template travel inside the file, so
llama.cpp needs no other file. The `gguf` package (pip install "guppyforge[gguf]") writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from guppyforge.defaults import GGUF_TYPE, GGUF_TYPES
from guppyforge.errors import GuppyError
from guppyforge.model.run import Run
from guppyforge.model.tokenizer import CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS, START

GGUF_FILE, MODELFILE = "model.gguf", "Modelfile"

# Our parameter name -> llama.cpp's gpt2 tensor name. "{i}" is the block index.
# lm_head.weight is tied to wte.weight: not stored, llama.cpp reuses token_embd when `output`
# is absent (the gpt2 loader marks it TENSOR_NOT_REQUIRED), which saves vocab x d_model weights.
TENSOR_MAP: dict[str, str] = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}


def _gguf():
    """The `gguf` module, or one line saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise GuppyError(
            '--to gguf needs the `gguf` package: pip install "guppyforge[gguf]"'
        ) from None
    return gguf


def check_gguf_type(gguf_type: str | None) -> None:
    """One-line errors for an unknown --gguf-type or a missing `gguf` package."""
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        choices = ", ".join(GGUF_TYPES)
        raise GuppyError(f"--gguf-type: unknown type '{gguf_type}'. Choose one of: {choices}")
    _gguf()


def gguf_tensors(run: Run) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's gpt2 names, as float32 arrays."""
    ours = {k: v for k, v in run.model.state_dict().items() if k != "lm_head.weight"}
    theirs = {}
    # Block by block, as llama.cpp's converter orders them (the embeddings come first).
    items = list(TENSOR_MAP.items())
    names = [(p, t, None) for p, t in items if p.startswith("w")]
    names += [(p, t, i) for i in range(run.model.cfg.n_layer) for p, t in items if "{i}" in p]
    names += [(p, t, None) for p, t in items if p.startswith("ln_f")]
    for pattern, target, i in names:
        tensor = ours.pop(pattern.format(i=i)).detach().float().cpu()
        theirs[target.format(i=i)] = tensor.numpy().copy()
    if ours:  # a new parameter in gpt.py that nobody mapped would silently vanish
        raise RuntimeError(f"export_gguf: no GGUF name for {sorted(ours)}; extend TENSOR_MAP")
    return theirs


def _storage(gguf, name: str, array: np.ndarray, gguf_type: str):
    """(data, raw_dtype) for one tensor: norms, biases and positions stay f32 in every type.

    1-D tensors are tiny and llama.cpp adds and normalises them in f32 anyway; the position
    table is small too, and keeping it exact costs nothing. A q8_0 row must split into blocks
    of 32 values: a matrix whose rows do not falls back to f16, as llama.cpp's converter does.
    """
    if array.ndim == 1 or name.startswith("position_embd") or gguf_type == "f32":
        return array.astype(np.float32), None
    if gguf_type == "q8_0" and array.shape[-1] % 32 == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array, q8), q8
    return array.astype(np.float16), None


def tokenizer_parts(run: Run) -> dict:
    """Tokens (by id), merges and token types from the run's byte-level BPE tokenizer.json.

    llama.cpp's `gpt2` tokenizer model is the same algorithm on the same strings (bytes spelled
    as GPT-2's printable characters, `Ġ` for a space), so the vocabulary is copied as it is.
    """
    spec = json.loads(run.tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    if model.get("type") != "BPE" or not byte_level or pre.get("add_prefix_space"):
        # llama.cpp's "gpt-2" pre-tokenizer is the GPT-2 regex with no prefix space: any other
        # setup would tokenize differently there than here, so refuse rather than drift.
        raise GuppyError(
            f"{run.path / 'tokenizer.json'}: not a byte-level BPE tokenizer with the GPT-2 regex "
            "(the one `guppyforge train` writes). Retrain, or export --to hf instead"
        )
    vocab = run.tokenizer.get_vocab(with_added_tokens=True)
    size = run.model.cfg.vocab_size
    if max(vocab.values()) >= size:  # an id with no embedding row: llama.cpp would refuse it
        raise GuppyError(
            f"{run.path / 'tokenizer.json'}: {len(vocab)} tokens for a model of {size}. "
            "The tokenizer is not this run's: restore it, or retrain"
        )
    tokens = [f"[PAD{i}]" for i in range(size)]  # rows the embedding has but the vocab lacks
    types = [5] * size  # UNUSED
    for text, i in vocab.items():
        tokens[i], types[i] = text, 1  # NORMAL
    for added in spec.get("added_tokens") or []:
        # <|pad|>, <|im_start|>, <|im_end|>: CONTROL, so llama.cpp matches them whole in a
        # prompt (with parse_special) and never prints them in a reply.
        types[added["id"]] = 3 if added.get("special") else 4  # CONTROL or USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    ids = {t: run.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    if None in ids.values():
        raise GuppyError(f"{run.path / 'tokenizer.json'}: lacks {SPECIAL_TOKENS}. Retrain the run")
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids}


def write_gguf(run: Run, path: Path, gguf_type: str = GGUF_TYPE) -> Path:
    """Write the model, tokenizer and chat template as one GGUF file at `path`."""
    check_gguf_type(gguf_type)
    cfg = run.model.cfg
    if cfg.activation != "gelu_tanh":
        # llama.cpp's gpt2 graph hard-codes GELU (tanh form): another activation would load
        # fine and then answer differently, the worst way to fail.
        raise GuppyError(
            f"{run.path / 'config.json'}: the model uses activation '{cfg.activation}', and "
            "llama.cpp's gpt2 computes gelu_tanh only. Export --to hf or onnx instead"
        )
    gguf = _gguf()
    parts = tokenizer_parts(run)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a crash never leaves half a file
    writer = gguf.GGUFWriter(tmp, "gpt2")
    try:
        persona = run.config.get("persona")
        name = persona.get("name") if isinstance(persona, dict) else None
        writer.add_name(str(name or run.path.name))
        file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[gguf_type]
        writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(cfg.context)
        writer.add_embedding_length(cfg.d_model)
        writer.add_feed_forward_length(cfg.d_ff)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(run.model.ln_f.eps)

        writer.add_tokenizer_model("gpt2")
        # "gpt-2": the GPT-2 regex, which is what tokenizers' ByteLevel(use_regex=True) splits
        # with. Without this key llama.cpp warns and falls back to a different default split.
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(parts["tokens"])
        writer.add_token_types(parts["types"])
        writer.add_token_merges(parts["merges"])
        ids = parts["ids"]
        writer.add_bos_token_id(ids[START])  # as in the hf export; never added (next line)
        writer.add_add_bos_token(False)  # our prompts start with <|im_start|>, nothing before
        writer.add_eos_token_id(ids[END])  # a reply ends at <|im_end|>
        writer.add_eot_token_id(ids[END])
        writer.add_pad_token_id(ids[PAD])
        writer.add_chat_template(CHAT_TEMPLATE)

        for tensor_name, array in gguf_tensors(run).items():
            data, raw_dtype = _storage(gguf, tensor_name, array, gguf_type)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path


# Ollama's templates are Go templates. This one renders exactly CHAT_TEMPLATE's ChatML.
OLLAMA_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def modelfile(run: Run, gguf_name: str = GGUF_FILE) -> str:
    """An Ollama Modelfile: the GGUF, ChatML, and `guppyforge chat`'s sampling defaults."""
    return f'''# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME`.
FROM ./{gguf_name}
TEMPLATE """{OLLAMA_TEMPLATE}"""
PARAMETER stop "{END}"
PARAMETER stop "{START}"
# Learned positions end at the model's context: llama.cpp cannot run past it.
PARAMETER num_ctx {run.model.cfg.context}
# guppyforge chat's defaults (Ollama's own repeat penalty would change the character's words).
PARAMETER temperature 0.7
PARAMETER top_k 50
PARAMETER top_p 1.0
PARAMETER repeat_penalty 1.0
PARAMETER num_predict 64
'''


def export_gguf(run: Run, out: Path, gguf_type: str = GGUF_TYPE) -> list[Path]:
    """Write model.gguf and an Ollama Modelfile into `out`; return the files written."""
    gguf_path = write_gguf(run, out / GGUF_FILE, gguf_type)
    (out / MODELFILE).write_text(modelfile(run))
    return [gguf_path, out / MODELFILE]
