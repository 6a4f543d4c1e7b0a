"""Export a run as a Hugging Face GPT-2 folder.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("export/cat")
    tok = AutoTokenizer.from_pretrained("export/cat")

Our model is GPT-2 shaped on purpose, so this is a renaming plus one transpose: GPT-2's linear
layers are `Conv1D` modules (a leftover of OpenAI's TensorFlow code) that store their weight as
(in, out), where `nn.Linear` stores (out, in). The mapping is one explicit table, in the style of nanoGPT's `from_pretrained`.
transformers itself is not needed to export, only to load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from guppyforge.defaults import TEMPERATURE, TOP_K
from guppyforge.model.run import Run
from guppyforge.model.tokenizer import END, PAD, START, save_tokenizer

# Our activation names -> transformers' ACT2FN names. "gelu_new" is GPT-2's own tanh GELU, the
# name every GPT-2 consumer knows.
HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}

# Our parameter name -> (GPT-2's name, transpose?). "{i}" is the block index.
WEIGHT_MAP: dict[str, tuple[str, bool]] = {
    "wte.weight": ("transformer.wte.weight", False),
    "wpe.weight": ("transformer.wpe.weight", False),
    "h.{i}.ln_1.weight": ("transformer.h.{i}.ln_1.weight", False),
    "h.{i}.ln_1.bias": ("transformer.h.{i}.ln_1.bias", False),
    "h.{i}.attn.c_attn.weight": ("transformer.h.{i}.attn.c_attn.weight", True),
    "h.{i}.attn.c_attn.bias": ("transformer.h.{i}.attn.c_attn.bias", False),
    "h.{i}.attn.c_proj.weight": ("transformer.h.{i}.attn.c_proj.weight", True),
    "h.{i}.attn.c_proj.bias": ("transformer.h.{i}.attn.c_proj.bias", False),
    "h.{i}.ln_2.weight": ("transformer.h.{i}.ln_2.weight", False),
    "h.{i}.ln_2.bias": ("transformer.h.{i}.ln_2.bias", False),
    "h.{i}.mlp.c_fc.weight": ("transformer.h.{i}.mlp.c_fc.weight", True),
    "h.{i}.mlp.c_fc.bias": ("transformer.h.{i}.mlp.c_fc.bias", False),
    "h.{i}.mlp.c_proj.weight": ("transformer.h.{i}.mlp.c_proj.weight", True),
    "h.{i}.mlp.c_proj.bias": ("transformer.h.{i}.mlp.c_proj.bias", False),
    "ln_f.weight": ("transformer.ln_f.weight", False),
    "ln_f.bias": ("transformer.ln_f.bias", False),
    # lm_head.weight is tied to wte.weight: not stored; tie_word_embeddings re-ties it on load.
}


def to_gpt2_state_dict(run: Run) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names, Linear weights transposed for Conv1D."""
    ours = {k: v for k, v in run.model.state_dict().items() if k != "lm_head.weight"}
    theirs = {}
    for pattern, (target, transpose) in WEIGHT_MAP.items():
        layers = range(run.model.cfg.n_layer) if "{i}" in pattern else [None]
        for i in layers:
            name = pattern.format(i=i)
            tensor = ours.pop(name).detach().cpu()
            # contiguous(): safetensors stores raw bytes, so a transposed view must be copied.
            theirs[target.format(i=i)] = (tensor.t() if transpose else tensor).contiguous()
    if ours:  # a new parameter in gpt.py that nobody mapped would silently vanish
        raise RuntimeError(f"export_hf: no GPT-2 name for {sorted(ours)}; extend WEIGHT_MAP")
    return theirs


def gpt2_config(run: Run) -> dict:
    """The config.json of transformers' GPT2Config for this run's shape."""
    cfg, tok = run.model.cfg, run.tokenizer
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.d_ff,
        "activation_function": HF_ACTIVATIONS[cfg.activation],
        "layer_norm_epsilon": run.model.ln_f.eps,
        # Our model trains without dropout; an exported model should match it bit for bit.
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "scale_attn_weights": True,
        "bos_token_id": tok.token_to_id(START),
        "eos_token_id": tok.token_to_id(END),
        "pad_token_id": tok.token_to_id(PAD),
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": "float32",
    }


def generation_config(run: Run) -> dict:
    """Defaults for `model.generate`: the same sampling as `guppyforge chat`."""
    tok = run.tokenizer
    return {
        "eos_token_id": tok.token_to_id(END),  # a reply ends at <|im_end|>
        "pad_token_id": tok.token_to_id(PAD),
        "bos_token_id": tok.token_to_id(START),
        "do_sample": True,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "top_p": 1.0,
        # Learned positions end at the context: a longer sequence would index past wpe and
        # crash, so cap the total length there rather than the number of new tokens.
        "max_length": run.model.cfg.context,
    }


def model_card(run: Run) -> str:
    """A short card for a run that has no README.md of its own: what it is, how to load it."""
    persona = run.config.get("persona")
    name = persona.get("name", run.path.name) if isinstance(persona, dict) else run.path.name
    cfg = run.model.cfg
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [guppyforge, gpt2, character]
---

# {name}

A tiny character language model made with guppyforge (GPT-2 shaped:
{cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads, context {cfg.context},
{run.model.num_params():,} parameters).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
messages = [{{"role": "user", "content": "hello"}}]
inputs = tok.apply_chat_template(
    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**inputs)  # generation_config.json: guppyforge chat's sampling
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


def export_hf(run: Run, out: Path) -> list[Path]:
    """Write config.json, model.safetensors, tokenizer files, generation_config.json, README.md."""
    files = [out / "config.json", out / "generation_config.json", out / "model.safetensors"]
    files[0].write_text(json.dumps(gpt2_config(run), indent=2) + "\n")
    files[1].write_text(json.dumps(generation_config(run), indent=2) + "\n")
    # metadata "pt" tells transformers these are PyTorch tensors (it warns without it).
    save_file(to_gpt2_state_dict(run), str(files[2]), metadata={"format": "pt"})
    files += save_tokenizer(run.tokenizer, out, run.model.cfg.context)
    # The run's own card (written by train) says the most; copy it as it is when there is one.
    own = run.path / "README.md"
    if own.is_file():
        shutil.copyfile(own, out / "README.md")
    else:
        (out / "README.md").write_text(model_card(run))
    files.append(out / "README.md")
    return files
