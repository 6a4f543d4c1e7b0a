"""guppyforge: a persona YAML becomes a dataset, a tiny character model, and a chat.

The library is usable without the CLI. Heavy modules (torch, datasets) are imported
lazily so that `guppyforge validate` and friends start in well under a second.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy re-exports: importing the package must stay cheap.
    if name == "load_persona":
        from guppyforge.persona import load_persona

        return load_persona
    if name == "generate_dataset":
        from guppyforge.generate import generate_dataset

        return generate_dataset
    if name == "train":
        from guppyforge.trainer import train

        return train
    raise AttributeError(f"module 'guppyforge' has no attribute {name!r}")
