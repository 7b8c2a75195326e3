"""How a runner updates its parameters: the shared recipe's AdamW and cosine schedule, and the
standard tools that keep less of the update's memory on the device (docs/runners.md,
"Standard tooling"):

- ``grads="released"``: a gradient is freed at its update. End to end (BP) that is one AdamW per
  parameter, stepped from the parameter's post-accumulate-grad hook during the backward pass
  (PyTorch's "optimizer step in backward" pattern), so a full set of gradients never exists; a
  layer-local runner frees each layer's gradients right after that layer's step.
- ``optimizer_state="host"``: AdamW's moments live in host memory between updates (pinned on
  CUDA), are copied to the device for one parameter's (or one layer's) update and copied back
  after it, so the device holds the moments of one update at a time. On the CPU, where host and
  device are one memory, the host copies are kept out of the tracker's count, as offloaded
  activations are (``host_memory.host_tensor``).

Both change what memory holds, never the update: ``membench verify`` compares the weights after
two steps with and without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .host_memory import host_memory, host_tensor

LEARNING_RATE = 2e-4
WEIGHT_DECAY = 1e-3
FINAL_LEARNING_RATE = 1e-5


def adamw_with_cosine(params, total_steps: int, **options):
    """The shared recipe: AdamW(lr 2e-4, wd 1e-3) with a cosine schedule down to 1e-5."""
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps), eta_min=FINAL_LEARNING_RATE
    )
    return optimizer, schedule


class HostState:
    """One optimizer's state in host memory between its steps: ``with state.on_device():`` puts
    it on ``device`` for the step inside and copies it back after. The step counts AdamW keeps
    on the CPU stay where they are."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer, self.device = optimizer, torch.device(device)
        self.host: dict[tuple[int, str], torch.Tensor] = {}  # (parameter id, key) -> host copy

    def _moments(self) -> Iterator[tuple[dict, str, tuple[int, str]]]:
        for parameter, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    yield state, key, (id(parameter), key)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        pin = self.device.type == "cuda"
        for state, key, _ in self._moments():
            # A device copy, as a GPU's would be (on the CPU, a clone the tracker counts).
            state[key] = state[key].to(self.device, non_blocking=pin, copy=True)
        yield
        for state, key, where in self._moments():  # the step may have created them
            if where not in self.host:
                self.host[where] = host_tensor(state[key], pin=pin)
            with host_memory():
                self.host[where].copy_(state[key], non_blocking=pin)
            state[key] = self.host[where]  # the device copy dies here

    @property
    def host_bytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in self.host.values())


class WholeModelAdamW:
    """The recipe's one AdamW over every parameter, stepped after the backward pass."""

    def __init__(self, params, total_steps: int):
        self.optimizer, self.schedule = adamw_with_cosine(params, total_steps)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def in_backward(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step(self, scaler: torch.amp.GradScaler) -> None:
        scaler.step(self.optimizer)

    def schedule_step(self) -> None:
        self.schedule.step()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    @property
    def host_bytes(self) -> int:
        return 0


class PerParameterAdamW:
    """One AdamW and cosine schedule per parameter (the same update as ``WholeModelAdamW``, one
    tensor at a time), each parameter updated on its own: in the backward pass from its
    post-accumulate-grad hook, its gradient freed right after (``release``), or one after
    another once the backward is done; with ``state_on_host`` its moments come to the device for
    its update only (``HostState``)."""

    def __init__(
        self, params, total_steps: int, device: torch.device, *, release: bool, state_on_host: bool
    ):
        self.parameters = [p for p in params if p.requires_grad]
        self.release = release
        pairs = [adamw_with_cosine([p], total_steps, foreach=False) for p in self.parameters]
        self.by_parameter = {p: optimizer for p, (optimizer, _) in zip(self.parameters, pairs)}
        self.schedules = [schedule for _, schedule in pairs]
        self.host = (
            {p: HostState(o, device) for p, o in self.by_parameter.items()} if state_on_host else {}
        )

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def _update(self, parameter: torch.nn.Parameter) -> None:
        optimizer = self.by_parameter[parameter]
        host = self.host.get(parameter)
        with host.on_device() if host is not None else contextlib.nullcontext():
            optimizer.step()
        if self.release:
            parameter.grad = None  # the gradient dies at its update

    @contextlib.contextmanager
    def in_backward(self) -> Iterator[None]:
        """With ``release``, each parameter is updated by a hook while the backward passes
        inside run. The hooks live for one step only, so hooks registered before the step (a
        memory tracker's, which names gradients) run before them."""
        if not self.release:
            yield
            return
        handles = [p.register_post_accumulate_grad_hook(self._update) for p in self.parameters]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """After the backward pass: every parameter's update in turn (nothing when released:
        the hooks did them). fp16's GradScaler is refused with this optimizer (check_tooling)."""
        if not self.release:
            for parameter in self.parameters:
                if parameter.grad is not None:
                    self._update(parameter)

    def schedule_step(self) -> None:
        for schedule in self.schedules:
            schedule.step()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.by_parameter.values())

    @property
    def host_bytes(self) -> int:
        return sum(state.host_bytes for state in self.host.values())
