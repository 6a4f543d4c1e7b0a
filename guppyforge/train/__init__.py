"""Stage 4: training, in the order to read it.

config.py      every training option: its default, help and bounds, written once (no torch)
precision.py   which number format trains on this device
optim.py       the update rule: Muon and AdamW, the learning-rate schedule, `train_step` (one step)
stopping.py    when a run stops: Ctrl-C, and a time budget fitted to the measured step time
loop.py        train(): a dataset folder in, a run folder out, top to bottom
run_folder.py  writing the run folder: weights, checkpoints, the loss plot, the model card
distributed.py training in N processes (DDP): each its share of a step's rows
"""
