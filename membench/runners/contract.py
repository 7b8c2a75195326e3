"""What a runner declares about itself, once, on its class (``Runner.contract``).

Everything the rest of membench needs to know about a method before it builds one is here, as
one typed object read by name: the sweep (which settings a runner takes), the planner (which
family it belongs to), the report (which series it groups with) and ``membench verify`` (what
it must equal). A subclass states what it changes: ``contract = BPRunner.contract.but(
micro_batch=True, same_gradients_as="bp")``. No torch: reading a contract needs nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerContract:
    """A runner's contract (see the module docstring). Every field but ``family`` defaults to
    "does not": a runner takes only what it declares."""

    # The family a report and the planner group it with ("bp", "ff"); "" for a method of its
    # own family (named after the method).
    family: str = ""
    # What it can take (a setting it does not take is refused before anything runs, or reset to
    # its default where the grid has several methods: docs/sweeps.md, "One configuration").
    layer_stack: bool = False  # trains a layer stack only (membench.archs.LayerStack)
    micro_batch: bool = False  # takes --micro-batch
    spans_devices: bool = False  # runs as --devices N ranks, one instance per rank
    pipeline_schedule: bool = False  # takes --schedule
    default_schedule: str | None = None  # the schedule when --schedule is not given
    grads_released: bool = False  # honours --grads released
    host_optimizer_state: bool = False  # honours --optimizer-state host
    # What `membench verify` holds it to (membench/verify/): a method whose first-step gradients
    # (dropout off; also on, with the same masks, where ``same_gradients_with_dropout``),
    # first-step per-layer losses, or per-layer gradients of a layer-local method, it must equal.
    same_gradients_as: str | None = None
    same_gradients_with_dropout: bool = False
    same_first_step_losses_as: str | None = None
    same_layer_gradients_as: str | None = None

    def but(self, **changes) -> RunnerContract:
        """This contract with ``changes``: how a subclass declares what it does differently."""
        return dataclasses.replace(self, **changes)

    def family_of(self, method: str) -> str:
        """The family of the method this contract belongs to."""
        return self.family or method
