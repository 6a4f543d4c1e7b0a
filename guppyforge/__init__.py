"""guppyforge: a persona YAML becomes a dataset, a tiny character model, and a chat.

The layers are the pipeline, in the order data flows through it; each imports only those above it:

    persona/     a YAML file -> a checked Persona -> conversations        (no torch, no click)
    cards/       Character Cards in and out (JSON, PNG, .charx), Q&A pairs (no torch, no click)
    dataset/     conversations -> a Hugging Face dataset folder           (no torch, no click)
    model/       tokenizer, transformer, packing, the one inference engine (torch)
    train/       the training loop -> a run folder
    evaluate/    eval's scores, and `why`'s trace back to the persona
    apps/        the command line (the only click user), chat, serve, export

Below them, used by all: errors.py (the one user-error type), files.py (writing files whole,
the package's own folders, what --force may replace), defaults.py (defaults several layers
share), version.py. pyproject.toml states the layers as import-linter contracts. The library
is usable without the CLI. Heavy modules (torch, datasets) are imported lazily so that
`guppyforge validate` and friends start in well under a second.
"""

from guppyforge.version import __version__  # noqa: F401  (re-exported)


def __getattr__(name: str):
    # Lazy re-exports: importing the package must stay cheap.
    if name == "load_persona":
        from guppyforge.persona.schema import load_persona

        return load_persona
    if name == "generate_dataset":
        from guppyforge.dataset.generate import generate_dataset

        return generate_dataset
    if name == "train":
        from guppyforge.train.loop import train

        return train
    raise AttributeError(f"module 'guppyforge' has no attribute {name!r}")
