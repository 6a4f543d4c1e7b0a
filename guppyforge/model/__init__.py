"""Stage 3: the model core, in the order to read it.

    tokenizer.py  text -> token ids, the ChatML chat format, prompts that fit the context
    gpt.py        the transformer (logits, or given targets the loss; a plain reference
                  `generate`) and its named shapes: where their parameters live, the one a
                  CPU budget picks
    decode.py     the fast paths gpt.py and the engine point at: the one-token decode step,
                  the weight layout it reads, the CPU's attention choice
    packing.py    conversations packed into training batches (and the eval loss)
    sampling.py   picking each next token, and tokens to shown text (streaming, stop strings)
    engine.py     the one inference engine, batch-native: one KV cache for prefill and decode,
                  the decoder that runs every reply as a row of one batch
    inside.py     inside a finished reply: each token's candidates and attention weights
    run.py        a run folder as everything that only reads it loads it (never the trainer)

The training loop that uses these is ../train/.
"""
