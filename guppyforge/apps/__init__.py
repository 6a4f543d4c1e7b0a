"""Stage 6: what people use.

cli.py        the `guppyforge` command: option types, the persona and dataset commands
cli_model.py  the model commands: train, sweep, presets, chat, eval, why, export, serve
text.py       the text those commands print
chat.py       the terminal REPL, one-shot replies, and the `--show-probs` lesson
serve.py      the OpenAI-compatible server and its request guards
openai_api.py OpenAI's request and response shapes, and the server's limits
export/       a run folder as transformers, ONNX, GGUF or a static web page
page/         the chat page serve and the web export share
sweep.py      many training jobs at once (a grid), as Ray tasks
"""
