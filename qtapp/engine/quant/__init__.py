"""Quantizing: the integer grid and packing (primitives), the methods that choose each
weight's integers (``methods``: RTN, GPTQ, AWQ), the pipeline that streams the model through
them one block at a time (pipeline, batching, attention) with a resumable per-block checkpoint
(qstore), and the calibration text and tokens (calibration)."""
