"""Fast mode's kept attention output across GPTQ's true-sequential passes
(docs/reliability.md#attention-output-reuse)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qtapp.engine.quant.batching import first_output
from qtapp.engine.quant.streaming import BlockInputs, block_linear


def mixer_output(groups: tuple[tuple[str, ...], ...]) -> str | None:
    """The token mixer's output projection of a block from its true-sequential groups (the
    family table, ArchSpec.present): the second group when it is one linear under the same
    module as linears of the first ("self_attn.o_proj" after q/k/v, Gated DeltaNet's
    "linear_attn.out_proj" after its input projections); None when the groups are otherwise."""
    if len(groups) < 2 or len(groups[1]) != 1:
        return None
    parent = groups[1][0].rpartition(".")[0]
    return groups[1][0] if parent and any(n.rpartition(".")[0] == parent
                                          for n in groups[0]) else None


class AttentionReuse:
    """Fast mode's kept attention output (docs/reliability.md#attention-output-reuse).

    True-sequential GPTQ runs the block once per group; after o_proj (the mixer's output
    projection, `mixer_output`) is quantized, the attention's output no longer changes, yet
    the gate/up pass, the down pass and the next block's forward would each recompute q/k/v
    and the attention. Instead the o pass keeps o_proj's input for every calibration sample
    on the device (`keep`: n × L × width floats), and once o_proj is quantized (`start`) the
    mixer module's forward is replaced by o_proj(kept input) of the mini-batch at hand: the
    same kernel on the same values, so every later number is bit-identical.

    The first call after `start` runs the real module and compares: only when its output
    is exactly o_proj(kept) (and nothing else it returns is set) is the replacement used;
    otherwise it logs once and the block recomputes. The mini-batches come in
    BlockInputs.batches order in every pass (call k is mini-batch k mod their count; a
    pass starts with `rewind`); a call whose batch size is not that mini-batch's is an
    error, not a silent mix-up. `remove` puts the module's forward back and frees the kept
    inputs (stream_blocks calls it after the block's forward)."""

    def __init__(self, block: nn.Module, linear: str, inputs: BlockInputs,
                 log: Callable[[str], None]) -> None:
        self.name = linear
        self.linear = block_linear(block, linear)
        self.parent_name = linear.rpartition(".")[0]
        self.parent = block.get_submodule(self.parent_name)
        self.batch = inputs.batch
        self.n = inputs.x.shape[0]
        self.n_batches = -(-self.n // self.batch)
        self.kept: torch.Tensor | None = None
        self.calls = 0
        self.state = "off"  # keeping → checking → on, or off
        self.log = log
        self._hook: Any = None
        self._rest = 0  # how many None the module returns after its output (a tuple's)

    def _rows(self, k: int) -> tuple[int, int]:
        start = (k % self.n_batches) * self.batch
        return start, min(self.batch, self.n - start)

    def keep(self) -> None:
        """Keep o_proj's input of every mini-batch in the pass that follows (the o pass)."""
        self.state, self.calls, self.kept = "keeping", 0, None

        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            start, m = self._rows(self.calls)
            self.calls += 1
            if self.state != "keeping" or x.shape[0] != m or self.calls > self.n_batches:
                self.state, self.kept = "off", None
                return
            if self.kept is None:
                self.kept = torch.empty((self.n, *x.shape[1:]), dtype=x.dtype,
                                        device=x.device)
            self.kept[start:start + m].copy_(x.detach())

        self._hook = self.linear.register_forward_pre_hook(hook)

    def start(self) -> None:
        """o_proj is quantized: later passes take the attention's output from the kept
        inputs (after the check on the first mini-batch)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.state != "keeping" or self.calls != self.n_batches or self.kept is None:
            self.state, self.kept = "off", None
            return
        self.state, self.calls = "checking", 0
        self.parent.forward = self._forward  # an instance attribute: removed by `remove`

    def rewind(self) -> None:
        self.calls = 0

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        start, m = self._rows(self.calls)
        self.calls += 1
        if hidden is None or hidden.shape[0] != m:
            raise RuntimeError(f"attention output reuse: {self.parent_name} got a batch of "
                               f"{None if hidden is None else hidden.shape[0]} samples where "
                               f"mini-batch {start // self.batch} has {m}")
        assert self.kept is not None
        y = self.linear(self.kept[start:start + m])
        if self.state == "on":
            return (y, *[None] * self._rest) if self._rest else y
        out = type(self.parent).forward(self.parent, *args, **kwargs)  # the check
        rest = out[1:] if isinstance(out, tuple) else ()
        if start == 0 and all(r is None for r in rest) and torch.equal(first_output(out), y):
            self.state, self._rest = "on", len(rest)
        else:
            self.log(f"{self.parent_name}'s output is not {self.name}(its input) for this "
                     "model: the attention is recomputed in the later passes")
            self.remove()
        return out

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.parent.__dict__.pop("forward", None)
        self.state, self.kept = "off", None
