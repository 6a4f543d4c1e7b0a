"""Stage 2: conversations -> a Hugging Face dataset folder (parquet splits, card, stats).

generate.py drives it: draw.py (unique conversations), split.py (leak-free by prompt),
write.py (parquet, atomically), card.py (the dataset card); read.py reads a folder back,
and formats.py reads chat data of other shapes (alpaca, guppylm, q/a...) as the same rows.
Never imports torch or click.
"""
