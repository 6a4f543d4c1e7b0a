"""Stage 4: the training loop (loop.py) and everything it writes into a run folder."""
