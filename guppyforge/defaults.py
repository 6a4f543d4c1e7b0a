"""The defaults that several layers share, each defined once.

Plain values with no imports, so the command line can show them in --help without loading torch.
"""

DEFAULT_PRESET = "guppy-9m"  # the model shape `train` builds unless told otherwise
DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device accepts; auto: CUDA, then MPS, then CPU
MAX_NEW_TOKENS = 64  # a reply's length cap in chat, eval and serve
TEMPERATURE = 0.7  # sampling temperature in chat, eval, serve and exports
TOP_K = 50  # sampling keeps the k likeliest tokens
LOSS_ON = ("replies", "all")  # which tokens count in the loss: the replies, or every token
