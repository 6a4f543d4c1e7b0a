"""Stage 2: conversations -> a Hugging Face dataset folder (parquet splits, card, stats).

Read in this order:

    generate.py  `guppyforge generate`: persona in, folder out, with its data warnings
    draw.py      unique conversations, in one process or in several
    split.py     the leak-free split: rows sharing a user message stay together
    folder.py    the folder itself: parquet written whole, the dataset card, reading it back
    formats.py   chat data of other shapes (messages, alpaca, guppylm, q/a...) as the same rows

Never imports torch or click.
"""
