"""Stage 5: what people use: chat, eval, export, serve, and the `guppyforge` command line."""
