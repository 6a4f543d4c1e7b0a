"""Stage 3: the model core, in the order to read it.

    tokenizer.py  text -> token ids, the ChatML chat format, prompts that fit the context
    gpt.py        the transformer: logits, or given targets the loss
    speed.py      the CPU speed paths gpt.py and the engine point at
    packing.py    conversations packed into training batches (and the eval loss)
    ../train/     the training loop
    engine.py     the inference engine, batch-native: KV cache, sampling, stop rules, streaming
    int8.py       int8 weights for the engine on a CPU

presets.py names the shapes, run.py reads and writes a run folder.
"""
