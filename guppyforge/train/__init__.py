"""Stage 4: training, in the order to read it.

loop.py       train(): a dataset folder in, a run folder out ("one step" marked inside)
config.py     every training option: its default, help and bounds, written once
optim.py      the update rule (Muon + AdamW, or AdamW) and the learning-rate schedule
precision.py  which number format trains on this device
stopping.py   Ctrl-C, time budgets, and timing a step to fit the schedule
checkpoint.py what resuming needs to continue exactly
run_files.py  the run folder's other files: config.json, weights, model card
plot.py       the loss curve
"""
