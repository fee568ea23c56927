"""Quality: the gate every job ends with (gate: perplexity of model and source, KL divergence
of the next-token distributions, top-1 agreement, a generation check and a verdict), its parts
(evaluate, kld, gencheck), and chatting with a folder or a GGUF file beside its source (chat).
See docs/quality.md."""
