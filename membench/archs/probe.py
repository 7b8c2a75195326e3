"""Whether an arch runs at a resolution, found before any cell runs: one forward on fake tensors.

membench knows the shapes of its own archs from their specs; a torchvision, timm or plugin model
it learns by building it and running one training-mode forward of a batch of two on fake
tensors (``FakeTensorMode``: nothing is computed or allocated, the same path as the estimate and
the FLOP count). A model that fails there (an input too small for its pooling, a ViT whose
patch grid needs 224, a unit whose output breaks the layer-stack contract) is refused up front in
one line, with the model's own reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..errors import one_line
from .bounded import call_bounded
from .layers import LayerStack
from .registry import TOKEN_KINDS, arch_kind, build_arch, clear_caches, resolve_arch
from .specs import ArchError, cifar_resnet_spec, conv_stack_spec

# Two samples: a training-mode BatchNorm needs more than one value per channel.
PROBE_BATCH = 2
PROBE_CLASSES = 10
LAYER_STACK_KINDS = ("conv-stack", "cifar-resnet")


@dataclass(frozen=True)
class ArchProbe:
    """What one fake forward of an arch at ``res`` showed: its kind, parameter count, and
    either each unit's output (C, H, W) (a layer stack) or the logits' shape (a classifier)."""

    name: str
    kind: str
    res: int
    parameters: int
    layer_shapes: tuple[tuple[int, ...], ...] | None
    output: tuple[int, ...]

    @property
    def is_layer_stack(self) -> bool:
        return self.layer_shapes is not None


def _walk(stack: LayerStack, x: torch.Tensor, name: str) -> list[tuple[int, ...]]:
    """Run every unit, checking each output against the stack's contract (a B x C_l x H x W
    map; a token stack's B x S x H_l)."""
    shapes = []
    for layer in stack.layers():
        z = layer.block(x)
        problem = stack.output_problem(z, x.shape[0], layer.channels)
        if problem:
            raise ArchError(f"{name}: unit {layer.index} {problem}")
        shapes.append(tuple(int(s) for s in z.shape[1:]))
        x = layer.next_input(z)
    return shapes


@contextlib.contextmanager
def _quiet_fake_tensors() -> Iterator[None]:
    """FakeTensorMode logs a traceback for an op whose meta kernel fails before it raises; the
    probe reports that error in one line, so the log would only repeat it as a traceback."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@cache
def probe_arch(name: str, res: int, classes: int = PROBE_CLASSES) -> ArchProbe:
    """Build ``name`` on fake tensors and run one training-mode forward at ``res`` (cached);
    ArchError, one line with the model's reason, if either fails, calls ``sys.exit`` or does
    not return within the bound on user code (``bounded.call_bounded``)."""
    return call_bounded(
        lambda: _probe(name, res, classes), f"probing --arch {name} at resolution {res}"
    )


def _probe(name: str, res: int, classes: int) -> ArchProbe:
    source = resolve_arch(name)
    with torch.random.fork_rng(devices=[]), _quiet_fake_tensors(), FakeTensorMode():
        model: nn.Module = build_arch(name, classes).train()
        parameters = sum(p.numel() for p in model.parameters())
        images = torch.randn(PROBE_BATCH, 3, res, res)
        try:
            if isinstance(model, LayerStack):
                shapes = _walk(model, images, name)
                return ArchProbe(
                    name, source.kind, res, parameters, tuple(shapes), (PROBE_BATCH, *shapes[-1])
                )
            logits = model(images)
        except ArchError:
            raise
        except Exception as err:  # the model's own code: its reason, in one line
            raise ArchError(f"{name} does not run at resolution {res}: {one_line(err)}") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (PROBE_BATCH, classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ArchError(
            f"{name} returned {got} for a batch of {PROBE_BATCH} at resolution {res}; "
            f"a classifier must return B x num_classes logits ({PROBE_BATCH} x "
            f"{classes}), a layer stack must be a membench.archs.LayerStack"
        )
    return ArchProbe(name, source.kind, res, parameters, None, tuple(logits.shape))


# A token model's forward is probed on sequences this long: what depends on the length (the
# positions the config has) is checked from the config, the rest does not depend on it.
TOKEN_PROBE_LENGTH = 8


@cache
def probe_tokens(
    name: str, objective: str | None = None, attn_implementation: str | None = None
) -> ArchProbe:
    """Build a token model (``hf:``) on fake tensors for ``objective`` and run one training
    forward of a batch of two short sequences (cached); ArchError, one line, if either fails or
    the forward does not return a scalar loss."""
    from .hf import as_on_real_tensors, token_batch

    source = resolve_arch(name)
    with (
        torch.random.fork_rng(devices=[]),
        _quiet_fake_tensors(),
        FakeTensorMode(),
        as_on_real_tensors(),
    ):
        model = build_arch(
            name, PROBE_CLASSES, objective=objective, attn_implementation=attn_implementation
        ).train()
        parameters = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(0)
        inputs, labels = token_batch(
            name, objective, PROBE_BATCH, TOKEN_PROBE_LENGTH, PROBE_CLASSES, generator
        )
        try:
            loss = model(inputs, labels)
        except Exception as err:  # the model's own code: its reason, in one line
            raise ArchError(f"{name} does not run on token sequences: {one_line(err)}") from None
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ArchError(f"{name} returned no scalar loss for a batch of token sequences")
    return ArchProbe(name, source.kind, TOKEN_PROBE_LENGTH, parameters, None, ())


@cache
def token_stack_problem(name: str) -> str | None:
    """Why ``name`` (a token model) cannot be cut into a layer stack, or None: its blocks found
    and their arguments rebuilt, on fake tensors (cached)."""
    from .hf import CLASSIFICATION, as_on_real_tensors

    try:
        with (
            torch.random.fork_rng(devices=[]),
            _quiet_fake_tensors(),
            FakeTensorMode(),
            as_on_real_tensors(),
        ):
            build_arch(name, PROBE_CLASSES, objective=CLASSIFICATION).as_layer_stack()
    except ArchError as err:
        return str(err)
    return None


def validate_arch(
    name: str,
    res: int | None = None,
    *,
    seq: int | None = None,
    objective: str | None = None,
    attn_implementation: str | None = None,
) -> None:
    """ArchError unless ``name`` is an arch that runs on the input: images at ``res`` (from its
    spec for membench's own archs, else from one fake forward, ``probe_arch``), or token
    sequences of ``seq`` for a token model (its positions from the config, its forward for
    ``objective`` and ``attn_implementation`` from ``probe_tokens``). A plugin's or an import
    path's module is imported under the same bound on time as the probe."""
    kind = arch_kind(name)
    if kind in TOKEN_KINDS:
        from .hf import check_sequence, objective_of

        if seq is None:
            raise ArchError(f"{name} takes token sequences: give their length, --seq N")
        objective_of(name, objective)
        check_sequence(name, seq)
        probe_tokens(name, objective, attn_implementation)
        return
    if seq is not None and res is None:
        raise ArchError(f"{name} takes images, not token sequences: give --res, not --seq")
    for value, option in (
        (objective, "--objective"),
        (attn_implementation, "--attn-implementation"),
    ):
        if value is not None:  # a token model's setting, never silently dropped
            raise ArchError(f"{option} applies to token models (hf:...); {name} takes images")
    if kind == "conv-stack":
        conv_stack_spec(name).check_resolution(res)
    elif kind == "cifar-resnet":
        cifar_resnet_spec(name).check_resolution(res)
    else:
        probe_arch(name, res)


def is_layer_stack(name: str, res: int | None = None) -> bool:
    """Whether ``name`` builds a ``LayerStack`` (what the layer-local methods and
    ``bp-deepsup`` need); torchvision and timm models never do."""
    kind = resolve_arch(name).kind
    if kind in LAYER_STACK_KINDS:
        return True
    if kind in ("torchvision", "timm"):
        return False
    if kind in TOKEN_KINDS:
        return token_stack_problem(name) is None
    return probe_arch(name, res).is_layer_stack


def refresh_registry() -> None:
    """Forget the entry points, model lists and probes seen so far (a package installed since,
    a plugin module edited in place)."""
    clear_caches()
    probe_arch.cache_clear()
    probe_tokens.cache_clear()
    token_stack_problem.cache_clear()
