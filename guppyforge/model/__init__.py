"""Stage 3: the model core, in the order to read it.

    tokenizer.py  text -> token ids, the ChatML chat format, prompts that fit the context
    gpt.py        the transformer (logits, or given targets the loss) and its named shapes:
                  where their parameters live, the one a CPU budget picks
    speed.py      the speed paths gpt.py and the engine point at (the one-token decode step)
    packing.py    conversations packed into training batches (and the eval loss)
    engine.py     the one inference engine, batch-native: KV cache, sampling, stop rules, streaming
    inside.py     inside a finished reply: each token's candidates and attention weights

The training loop that uses these is ../train/.
"""
