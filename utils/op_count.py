"""Count the aten operations a piece of work dispatches, forward and backward, by the part of the model that
issued them: exact and device independent, a proxy for the kernel launches a GPU step pays for.

Forward operations take the label of the innermost labelled module running (a forward hook pair per module).
Backward operations take the label of the forward region that created the autograd node being run: the
forward records the autograd sequence number at every label change, and a node's sequence number says where
it was made. A parameter's gradient accumulation takes its module's label. Everything else is `default`.
Only aten operations count (not the profiler's markers). `computing` counts those that are not views
(detach, slice, transpose, expand...): views launch no kernel on a GPU.
"""
from __future__ import annotations

import bisect
from collections import Counter

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def _next_sequence_nr() -> int:
    """The sequence number the next autograd node will get (making a node to read it takes one)."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True)
        return (probe * 1).grad_fn._sequence_nr() + 1


class OpCounter(TorchDispatchMode):
    """with OpCounter({"image": model.image_encoder, ...}) as counter: step(); counter.counts["image"]"""

    def __init__(self, modules: dict[str, nn.Module] | None = None, default: str = "default"):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.computing: Counter[str] = Counter()   # the same, views left out
        self.default, self.stack = default, [default]
        self.region_starts: list[int] = []      # autograd sequence numbers where a label's region began
        self.region_labels: list[str] = []
        self.parameter_labels: dict[int, str] = {}
        self.hooks = []
        self.paused = False
        for label, module in (modules or {}).items():
            self.parameter_labels.update({id(p): label for p in module.parameters()})
            self.hooks.append(module.register_forward_pre_hook(lambda m, a, label=label: self._enter(label)))
            self.hooks.append(module.register_forward_hook(lambda m, a, o: self._leave()))

    def _mark(self) -> None:
        self.paused = True
        try:
            nr = _next_sequence_nr()
        finally:
            self.paused = False
        self.region_starts.append(nr)
        self.region_labels.append(self.stack[-1])

    def _enter(self, label: str) -> None:
        self.stack.append(label)
        self._mark()

    def _leave(self) -> None:
        self.stack.pop()
        self._mark()

    def label(self, label: str):
        """A context that labels the operations run inside it (and the backward of what it builds)."""
        counter = self

        class _Region:
            def __enter__(self):
                counter._enter(label)

            def __exit__(self, *exc):
                counter._leave()
        return _Region()

    def _label_now(self) -> str:
        node = torch._C._current_autograd_node()
        if node is None:
            return self.stack[-1]
        variable = getattr(node, "variable", None)     # AccumulateGrad: the parameter's own label
        if variable is not None:
            return self.parameter_labels.get(id(variable), self.default)
        i = bisect.bisect_right(self.region_starts, node._sequence_nr()) - 1
        return self.region_labels[i] if i >= 0 else self.default

    def __enter__(self):
        self._mark()
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and func.namespace == "aten":
            label = self._label_now()
            self.counts[label] += 1
            self.computing[label] += not func.is_view
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
