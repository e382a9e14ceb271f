"""Getting a model and running it: loading (folders, GGUF, hub, PyPI-packaged models), the
architecture map (which matrices write the residual stream), chat formatting, forward hooks,
generation, the context check, OpenAI-compatible servers, random-weight models of real shapes
(:mod:`.synthetic`) and what a run costs (:mod:`.costs`). Knows nothing of directions or edits."""
