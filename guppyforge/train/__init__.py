"""Stage 4: training, in the order to read it.

config.py      every training option: its default, help and bounds, written once (no torch)
precision.py   which number format trains on this device
loop.py        the update rule and schedule, `train_step` (one step), stopping, and train()
run_folder.py  the run folder: its layout, checkpoints, the loss plot, the model card
distributed.py training in N processes (DDP): each its share of a step's rows
"""
