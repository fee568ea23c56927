"""The engine: everything QuantDesk does to a model, with no Qt in it.

Sub-packages, top layer first (each may use those below it, never those above; the
import-linter contracts in pyproject.toml check this); each ``__init__`` says what it holds:

- ``jobs/``     — running one job: the orchestrator from model to renamed output, and the
  worker process that runs it for the window and the command line.
- ``planning/`` — before and around a run: hardware, the advisor, the planner (memory, disk,
  time), sizes, compatibility, and the size budget (sensitivity pass, allocation).
- ``quality/``  — how good the result is: the quality gate (perplexity, KL divergence,
  generation check, verdict) and chatting with a model.
- ``export/``   — writing GPTQ, AWQ and compressed-tensors folders and model cards.
- ``gguf/``     — GGUF conversion, types, importance matrix and llama.cpp.
- ``quant/``    — turning weights into integers: the grid, the methods (RTN, GPTQ, AWQ), the
  block-streaming pipeline, its checkpoint, calibration text.
- ``model/``    — where a model comes from and what it is: sources and the checks every
  command runs on its inputs, supported families, loading plain and quantized folders.

The shared vocabulary, used by every layer: ``config`` (the typed job spec), ``events`` (the
versioned event stream), ``results`` (a job's versioned result, ``JobResult``), ``outputs``
(the output folder's life cycle and locks), ``units`` (sizes and durations for people) and
``errors``.
"""
