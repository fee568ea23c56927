"""Linears that read the same input share one Hessian, and GPTQ solves them stacked.

q/k/v read the same normed hidden states and gate/up the same FFN input: the pipeline sums
XᵀX once for each such set and runs one GPTQ column sweep over their stacked rows. Both must
give what separate accumulation and separate sweeps give.
"""

from __future__ import annotations

import torch

from qtapp.engine.config import GPTQOptions, JobSpec, QuantScheme
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant import pipeline
from qtapp.engine.quant.methods.gptq import HessianAccumulator, gptq_quantize
from qtapp.engine.quant.pipeline import BlockQuantizer, collect_hessians
from qtapp.engine.quant.streaming import LayerStreamer

ATTN_IN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
FFN_IN = ["mlp.gate_proj", "mlp.up_proj"]


def _first_block(tiny_llama_dir):
    info = resolve_model(str(tiny_llama_dir))
    streamer = LayerStreamer(info, torch.device("cpu"))
    tokens = torch.randint(0, 200, (6, 32), generator=torch.Generator().manual_seed(0))
    inputs = streamer.capture_inputs(tokens, batch=2)  # three mini-batches
    block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
    return info, streamer, block, inputs


def _separate_hessians(block, names, inputs) -> dict[str, torch.Tensor]:
    acc = {n: HessianAccumulator(block.get_submodule(n).in_features) for n in names}
    hooks = [block.get_submodule(n).register_forward_hook(
        lambda _m, args, _o, n=n: acc[n].add_batch(args[0])) for n in names]
    with torch.no_grad():
        for xb, kw in inputs.batches():
            block(xb, **kw)
    for h in hooks:
        h.remove()
    return {n: a.H for n, a in acc.items()}


def test_linears_on_one_input_share_an_accumulator(tiny_llama_dir):
    _info, streamer, block, inputs = _first_block(tiny_llama_dir)
    try:
        names = [*ATTN_IN, "self_attn.o_proj", *FFN_IN, "mlp.down_proj"]
        shared = collect_hessians(block, names, inputs)
        separate = _separate_hessians(block, names, inputs)
    finally:
        streamer.close()
    assert shared["self_attn.q_proj"] is shared["self_attn.k_proj"] is shared["self_attn.v_proj"]
    assert shared["mlp.gate_proj"] is shared["mlp.up_proj"]
    assert len({id(a) for a in shared.values()}) == 4  # qkv, o, gate/up, down
    for n in names:
        assert shared[n].n_samples == 6 * 32
        torch.testing.assert_close(shared[n].H, separate[n], rtol=1e-5, atol=1e-6)


def test_hessian_passes_stop_before_the_products_nobody_reads(tiny_llama_dir):
    """After the first mini-batch has shown which linears share an input, the q/k/v pass
    stops before q's product and the down pass before down's."""
    _info, streamer, block, inputs = _first_block(tiny_llama_dir)
    ran: list[str] = []
    names = [*ATTN_IN, "mlp.down_proj"]
    hooks = [block.get_submodule(n).register_forward_hook(
        lambda _m, _a, _o, n=n: ran.append(n)) for n in names]
    try:
        collect_hessians(block, ATTN_IN, inputs)
        qkv_runs = list(ran)
        ran.clear()
        collect_hessians(block, ["mlp.down_proj"], inputs)
    finally:
        for h in hooks:
            h.remove()
        streamer.close()
    assert qkv_runs == ATTN_IN[:2]  # the first of three mini-batches, stopped before v
    assert ran == ATTN_IN * 3  # the whole attention ran each time, down_proj never


def test_stacked_sweep_equals_one_sweep_per_weight():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 128, generator=g) @ torch.randn(128, 128, generator=g)  # correlated
    H = 2 * X.T @ X / X.shape[0]
    Ws = [torch.randn(n, 128, generator=g) * 0.05 for n in (96, 32, 32)]
    scheme = QuantScheme(4, 32, True)
    for options in (GPTQOptions(), GPTQOptions(act_order=True, static_groups=True)):
        stacked = gptq_quantize(torch.cat(Ws), H, scheme, options)
        start = 0
        for W in Ws:
            alone = gptq_quantize(W, H, scheme, options)
            part = stacked.rows(start, start + W.shape[0])
            start += W.shape[0]
            assert (part.q == alone.q).float().mean() > 0.999
            torch.testing.assert_close(part.scale, alone.scale)
            assert torch.equal(part.g_idx, alone.g_idx)


def test_block_quantizer_stacks_only_linears_with_the_same_scheme(tiny_llama_dir, tmp_path):
    info, streamer, block, inputs = _first_block(tiny_llama_dir)
    job = JobSpec.from_dict({
        "model": str(tiny_llama_dir), "method": "gptq", "out": str(tmp_path / "o"),
        "scheme": {"bits": 4, "group_size": 32, "sym": True},
        "rules": [{"pattern": "*k_proj", "scheme": {"bits": 8, "group_size": 32, "sym": True}}],
    })
    events = []
    sweeps = []
    real = pipeline.gptq_quantize

    def counting(W, H, scheme, options):
        sweeps.append((W.shape[0], scheme.bits))
        return real(W, H, scheme, options)

    pipeline.gptq_quantize = counting
    try:
        report = BlockQuantizer(job, info, events.append, lambda: False).quantize(
            0, block, streamer.block_prefix(0), inputs)
    finally:
        pipeline.gptq_quantize = real
        streamer.close()
    q, k, v = (block.get_submodule(n).out_features for n in ATTN_IN)
    gate, up = (block.get_submodule(n).out_features for n in FFN_IN)
    # q and v stacked at 4 bit, k alone at 8 bit; gate and up stacked; o and down alone
    assert sorted(sweeps) == sorted([(q + v, 4), (k, 8), (64, 4), (gate + up, 4), (64, 4)])
    layers = [e for e in events if type(e).__name__ == "Layer"]
    assert sorted(e.module.rsplit(".", 2)[-2] + "." + e.module.rsplit(".", 1)[-1]
                  for e in layers) == sorted([*ATTN_IN, "self_attn.o_proj", *FFN_IN,
                                              "mlp.down_proj"])
    assert {e.module.split(".")[-1]: e.bits for e in layers}["k_proj"] == 8
    assert report.modules["self_attn.k_proj"].bits == 8
    assert report.modules["self_attn.q_proj"].q.shape == (q, 64)
    # the parts of a stacked sweep are separate tensors: a checkpoint can save them
    from qtapp.engine.quant.qstore import QuantStore

    store = QuantStore(tmp_path / "store", fingerprint="test")
    store.save_block(0, report.modules, report.meta, report.floats)
    loaded, _meta, _floats = store.load_block(0)
    assert torch.equal(loaded["self_attn.v_proj"].q, report.modules["self_attn.v_proj"].q)
