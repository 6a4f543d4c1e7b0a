"""guppyforge: a persona YAML becomes a dataset, a tiny character model, and a chat.

The subpackages are the pipeline, in the order data flows through it:

    persona/   a YAML file -> a checked Persona -> conversations       (no torch, no click)
    dataset/   conversations -> a Hugging Face dataset folder          (no torch, no click)
    model/     tokenizer, transformer, packing, the inference engine   (torch)
    train/     the training loop -> a run folder
    apps/      chat, eval, export, serve, and the `guppyforge` command (the only click user)

The library is usable without the CLI. Heavy modules (torch, datasets) are imported
lazily so that `guppyforge validate` and friends start in well under a second.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy re-exports: importing the package must stay cheap.
    if name == "load_persona":
        from guppyforge.persona.load import load_persona

        return load_persona
    if name == "generate_dataset":
        from guppyforge.dataset.generate import generate_dataset

        return generate_dataset
    if name == "train":
        from guppyforge.train.loop import train

        return train
    raise AttributeError(f"module 'guppyforge' has no attribute {name!r}")
