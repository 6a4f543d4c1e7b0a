"""The defaults that several layers share, each defined once.

Plain values with no imports, so the command line can show them in --help without loading torch.
"""

DEFAULT_PRESET = "guppy-9m"  # the model shape `train` builds unless told otherwise
DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device accepts; auto: CUDA, then MPS, then CPU
MAX_NEW_TOKENS = 64  # a reply's length cap in chat, eval and serve
TEMPERATURE = 0.7  # sampling temperature in chat, eval, serve and exports
TOP_K = 50  # sampling keeps the k likeliest tokens
LOSS_ON = ("replies", "all")  # which tokens count in the loss: the replies, or every token
ROWS = 60_000  # conversations `generate` writes and `validate` checks a persona can fill
# `eval`: replies per probe, traced test prompts per topic, held-out off-topic prompts asked
EVAL_SAMPLES, EVAL_TOPIC_SAMPLES, EVAL_OFFTOPIC_SAMPLES = 5, 2, 20
EXPORT_TARGETS = ("hf", "onnx", "gguf", "web")  # what `export --to` writes (apps/export/)
# GGUF weights. f16 by default: half of f32's size, and greedy replies agree with guppyforge's
# own (tests/test_gguf.py); q8_0 is smaller still, but at this size every weight matters.
GGUF_TYPES, GGUF_TYPE = ("f16", "f32", "q8_0"), "f16"
