"""The Hugging Face Hub inside QuantDesk: find a model and learn whether it fits before a
download (search, verdicts), fetch only what quantizing needs with progress, cancel and
resume (download: the one implementation lives in qtapp.engine.model.hub_files, which
model.sources uses too), publish an output (publish), and hand a GGUF to the apps that run it
(local_apps). The endpoint (a mirror through HF_ENDPOINT) and the token (huggingface-hub's own
`hf auth login`) are read by settings. No Qt here: the window calls these off its UI thread.

A layer of its own above planning (the fit verdicts use the planner), beside jobs.
"""
