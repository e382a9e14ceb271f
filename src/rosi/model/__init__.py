"""Getting a model and running it: loading (folders, GGUF, hub, PyPI-packaged models), the
architecture map (which matrices write the residual stream), chat formatting, forward hooks,
generation and OpenAI-compatible servers. Knows nothing of directions or edits."""
