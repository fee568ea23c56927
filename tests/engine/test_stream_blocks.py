"""`stream_blocks`, the one block-streaming loop of the quantizing pass, the importance-matrix
pass and the sensitivity pass: block i materialised with block i + 1 being read meanwhile, the
caller's work on it, then X_{i+1} = block i (X_i), the caller's hooks removed, the block freed,
and a cancel check before every block."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from qtapp.engine.errors import Cancelled
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant.streaming import LayerStreamer, stream_blocks

TOKENS = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))


def _streamer(tiny_llama_dir):
    streamer = LayerStreamer(resolve_model(str(tiny_llama_dir)), torch.device("cpu"))
    return streamer, streamer.capture_inputs(TOKENS, batch=2)


def test_each_block_sees_the_previous_blocks_output(tiny_llama_dir):
    """The inputs each block gets are the hidden states the whole model (transformers) computes
    before that block; every block is materialised while in use and freed after."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(input_ids=TOKENS, output_hidden_states=True).hidden_states
    streamer, inputs = _streamer(tiny_llama_dir)
    seen, done, calls = [], [], []
    try:
        for b in stream_blocks(streamer, inputs, lambda: False,
                               lambda i, s: done.append((i, s, _on_meta(streamer.blocks[i])))):
            assert b.prefix == f"model.layers.{b.index}."
            assert b.module is streamer.blocks[b.index] and not _on_meta(b.module)
            nxt = streamer.block_prefix(b.index + 1)
            assert (nxt in streamer._pending) == (b.index + 1 < streamer.n_blocks)  # prefetch
            seen.append(inputs.x.clone())
            b.hooks.append(b.module.mlp.down_proj.register_forward_hook(
                lambda _m, _a, _o, i=b.index: calls.append(i)))
    finally:
        streamer.close()
    assert len(seen) == streamer.n_blocks == 2
    for i, x in enumerate(seen):
        torch.testing.assert_close(x, hidden[i], rtol=1e-4, atol=1e-5)
    assert [(i, freed) for i, _s, freed in done] == [(0, True), (1, True)]
    assert all(s >= 0 for _i, s, _f in done)
    assert calls == [0, 0, 1, 1]  # the hook ran in its block's forward (2 mini-batches) only
    assert not any(blk.mlp.down_proj._forward_hooks for blk in streamer.blocks)


def test_cancel_is_checked_before_every_block(tiny_llama_dir):
    streamer, inputs = _streamer(tiny_llama_dir)
    done: list[int] = []
    yielded: list[int] = []
    try:
        with pytest.raises(Cancelled):
            for b in stream_blocks(streamer, inputs, lambda: len(done) >= 1,
                                   lambda i, _s: done.append(i)):
                yielded.append(b.index)
    finally:
        streamer.close()
    assert yielded == [0] and done == [0]
    assert _on_meta(streamer.blocks[1])  # never materialised


def _on_meta(module: torch.nn.Module) -> bool:
    return all(p.device.type == "meta" for p in module.parameters())
