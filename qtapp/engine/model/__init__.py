"""The model and its sources: resolving 'demo', a folder or a Hub id into a checked
``ModelInfo``, with the input checks every command shares (sources); the supported families
and their layer widths (arch); loading plain and quantized folders as transformers models,
with the one tokenizer loader (loader)."""
