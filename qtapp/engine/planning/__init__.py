"""Planning: what this machine has (hardware), which method to use (advisor), whether a job
fits and how long it takes (planner), output sizes (budget), whether a model can be quantized
with a method at all (compat), and the size budget: the per-module sensitivity pass
(sensitivity) and the allocation of schemes to modules (allocate)."""
