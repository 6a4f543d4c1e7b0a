"""Stage 3: the model core, in the order to read it.

    tokenizer.py  text -> token ids, and the ChatML chat format
    gpt.py        the transformer (its forward computes the loss too)
    batches.py    conversations packed into training batches
    ../train/     the training loop
    engine.py     the inference engine: KV cache, sampling, stop rules, streaming

presets.py names the shapes, run.py reads and writes a run folder, int8.py makes int8 weights.
"""
