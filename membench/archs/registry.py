"""Where an arch name leads: membench's own archs, torchvision, timm, a plugin package's entry
point, or an import path (docs/archs.md, "Names").

Every arch is a *factory*: a callable that takes the class count as ``num_classes`` and returns
an ``nn.Module``, either a classifier (images -> B x K logits: every BP method but
``bp-deepsup``) or a ``LayerStack`` (its units in order: every method; the BP methods add the
global average pool and ``Linear(K)`` head). A name is looked up in this order:

1. ``tv:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``;
2. ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=K)`` (the optional
   ``timm`` extra); ``hf:MODEL_TYPE[?overrides]`` or ``hf:PATH/config.json``: a ``transformers``
   model from its config, random weights, token sequences in (the optional ``hf`` extra;
   ``membench.archs.hf``);
3. membench's own: the conv stacks (``vgg8``, ``vgg11``, ``vgg-dD-wW[-pP]``) and the CIFAR
   ResNets (``resnet20`` ... ``resnet110``, ``resnet{6n+2}[-stage]``);
4. a name registered in the ``membench.archs`` entry-point group by an installed package;
5. ``package.module:callable`` (``mypkg.models:resnet110``), imported from ``sys.path``.

Building (``build_arch``) checks that the factory returned an ``nn.Module``; every error is an
``ArchError``, one line.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

from ..errors import one_line
from .specs import (
    PARAMETRIC_RULE,
    RESNET_RULE,
    ArchError,
    is_cifar_resnet,
    is_conv_stack,
)

ENTRY_POINT_GROUP = "membench.archs"
TORCHVISION_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
TIMM_MISSING = "timm is not installed: pip install 'membench[timm]' (or pip install timm)"
# The kinds of source a name can have (ArchSource.kind).
KINDS = ("conv-stack", "cifar-resnet", "torchvision", "timm", "hf", "entry-point", "import-path")
# The kinds whose input is token sequences (a cell's seq); every other kind takes images.
TOKEN_KINDS = ("hf",)


@dataclass(frozen=True)
class ArchSource:
    """What an arch name stands for: its ``kind`` (one of ``KINDS``) and its ``factory``
    (``factory(num_classes=K)`` builds the module)."""

    name: str
    kind: str
    factory: Callable[..., object]
    where: str  # what the factory is, for messages


@cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def clear_caches() -> None:
    """Forget the entry points read so far (``probe.refresh_registry`` clears everything)."""
    _entry_points.cache_clear()
    torchvision_model_names.cache_clear()


def plugin_arch_names() -> list[str]:
    """The names installed packages register in the ``membench.archs`` group, sorted."""
    return sorted(_entry_points())


def is_torchvision(name: str) -> bool:
    """Whether ``name`` is a torchvision classifier (``tv:NAME``)."""
    return name.startswith(TORCHVISION_PREFIX)


def is_timm(name: str) -> bool:
    """Whether ``name`` is a timm model (``timm:NAME``)."""
    return name.startswith(TIMM_PREFIX)


@cache
def torchvision_model_names() -> list[str]:
    """Classification models torchvision can build, as ``tv:NAME``."""
    import torchvision

    return [TORCHVISION_PREFIX + n for n in torchvision.models.list_models(torchvision.models)]


# Keywords membench gives some torchvision builders. GoogLeNet and Inception v3 return their
# auxiliary classifiers' logits beside the main ones in training mode; membench's bp trains one
# cross-entropy of the logits, so the auxiliary heads are left out (init_weights=True is their
# current default, said explicitly to silence the warning about a future change).
TORCHVISION_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _torchvision(name: str) -> ArchSource:
    model = name[len(TORCHVISION_PREFIX) :]
    if name not in torchvision_model_names():
        raise ArchError(
            f"unknown torchvision model {model!r}; see "
            "torchvision.models.list_models(module=torchvision.models)"
        )

    def factory(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(
            model, weights=None, num_classes=num_classes, **TORCHVISION_OPTIONS.get(model, {})
        )

    return ArchSource(name, "torchvision", factory, f"torchvision.models.get_model({model!r})")


def _timm(name: str) -> ArchSource:
    model = name[len(TIMM_PREFIX) :]
    try:
        import timm
    except ImportError:
        raise ArchError(f"{name}: {TIMM_MISSING}") from None
    if not timm.is_model(model):
        raise ArchError(f"unknown timm model {model!r}; see timm.list_models()")

    def factory(num_classes: int) -> nn.Module:
        return timm.create_model(model, pretrained=False, num_classes=num_classes)

    return ArchSource(name, "timm", factory, f"timm.create_model({model!r})")


def _hf(name: str) -> ArchSource:
    from .hf import build_hf, hf_config

    hf_config(name)  # ArchError now for a model type, field or file transformers cannot read

    def factory(num_classes: int, **options) -> nn.Module:
        return build_hf(name, num_classes, **options)

    return ArchSource(name, "hf", factory, f"transformers config {name[3:]!r}")


def _builtin(name: str) -> ArchSource | None:
    if is_conv_stack(name) or name.startswith("vgg-d"):
        from .conv_stack import build_conv_stack

        return ArchSource(
            name, "conv-stack", lambda num_classes: build_conv_stack(name), "membench conv stack"
        )
    if is_cifar_resnet(name):
        from .resnet import build_cifar_resnet

        return ArchSource(
            name,
            "cifar-resnet",
            lambda num_classes: build_cifar_resnet(name),
            "membench CIFAR ResNet",
        )
    return None


def _checked_callable(value: object, name: str, where: str) -> Callable[..., object]:
    if not callable(value):
        raise ArchError(
            f"{where} (for --arch {name}) is an object of type "
            f"{type(value).__name__}, not a callable taking num_classes"
        )
    try:
        inspect.signature(value).bind(num_classes=10)
    except TypeError:
        raise ArchError(
            f"{where} (for --arch {name}) cannot be called as "
            f"{where}(num_classes=K): it must take the class count"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin): building will say
    return value


def _entry_point(name: str) -> ArchSource:
    ep = _entry_points()[name]
    try:
        factory = ep.load()
    except Exception as err:  # a plugin's import may fail in any way; say which, in one line
        raise ArchError(
            f"arch {name!r}: entry point {ep.value} does not import: {one_line(err)}"
        ) from None
    return ArchSource(name, "entry-point", _checked_callable(factory, name, ep.value), ep.value)


def _import_path(name: str) -> ArchSource:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ArchError(f"--arch {name!r}: an import path is package.module:callable")
    try:
        value = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises while importing
        raise ArchError(
            f"--arch {name}: module {module_name!r} does not import: {one_line(err)}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ArchError(f"--arch {name}: module {module_name!r} has no {attribute!r}")
        value = getattr(value, part)
    return ArchSource(name, "import-path", _checked_callable(value, name, name), name)


def resolve_arch(name: str) -> ArchSource:
    """What ``name`` stands for (the order of the module docstring); ArchError naming the
    choices for a name nothing knows."""
    if is_torchvision(name):
        return _torchvision(name)
    if is_timm(name):
        return _timm(name)
    if name.startswith("hf:"):
        return _hf(name)
    builtin = _builtin(name)
    if builtin is not None:
        return builtin
    if name in _entry_points():
        return _entry_point(name)
    if ":" in name:
        return _import_path(name)
    plugins = plugin_arch_names()
    raise ArchError(
        f"unknown arch {name!r}; valid: vgg8, vgg11, {PARAMETRIC_RULE}; resnet20, resnet32, "
        f"resnet44, resnet56, resnet110 ({RESNET_RULE}); tv:NAME (torchvision), timm:NAME; "
        + (f"plugins: {', '.join(plugins)}; " if plugins else "")
        + "hf:MODEL_TYPE[?key=value&...] (transformers); "
        + "or package.module:callable (a factory taking num_classes)"
    )


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile moves to the meta device as it is registered.

    For building a model on fake tensors (the estimate, the FLOP count, the probe): its
    constructor runs on real tensors, where code that computes shapes with torch ops and reads
    them back (torchvision's RegNet widths, timm's ``linspace(...).tolist()`` drop-path rates,
    ``trunc_normal_``'s rejection loop) works as ever, while its weights take no memory and its
    initialisers do nothing (torch's skip meta tensors). Buffers stay real: they are small, and
    some are data the forward indexes with (Swin's relative positions), except those a
    constructor makes on its parameters' device (timm's Swin), which are meta too. An op that
    mixes meta and real tensors runs on meta (``_MetaAmongReal``).
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(
                param.detach().to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = register
    try:
        with _MetaAmongReal():
            yield
    finally:
        nn.Module.register_parameter = original


# Tensor methods that write into their first argument, besides those named ``x_``.
_IN_PLACE_DUNDERS = frozenset(
    f"__{name}__"
    for name in (
        "setitem",
        "iadd",
        "isub",
        "imul",
        "itruediv",
        "ifloordiv",
        "imod",
        "ipow",
        "imatmul",
        "iand",
        "ior",
        "ixor",
        "ilshift",
        "irshift",
    )
)


class _MetaAmongReal(TorchFunctionMode):
    """How a constructor's ops treat the meta parameters beside its real tensors: an op given
    both runs on the meta device, the real ones moved there (timm's hybrid ViTs run their
    backbone on a real zero image to learn its output size), and one that writes meta values
    into a real tensor (``real.copy_(meta)``, timm's Swin-v2 filling a buffer; ``real[i] =
    meta``) fills it with NaN (integers: left as they are) instead of failing ("Cannot copy
    out of meta tensor"): a meta tensor has no values, the fake tensor the buffer becomes has
    none either, and a constructor that reads it back reads NaN, not plausible numbers."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _mixes_meta_and_real((*args, *kwargs.values())):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        writes = name in _IN_PLACE_DUNDERS or (name.endswith("_") and not name.endswith("__"))
        if writes and isinstance(args[0], torch.Tensor) and not args[0].is_meta:
            if args[0].is_floating_point() or args[0].is_complex():
                args[0].fill_(float("nan"))
            return args[0]
        args, kwargs = tree_map_only(torch.Tensor, lambda t: t.to("meta"), (args, kwargs))
        return func(*args, **kwargs)


def _mixes_meta_and_real(values) -> bool:
    """Whether ``values`` (an op's arguments, and the lists among them: ``torch.cat``'s) hold
    both meta and real tensors. A scan, not a pytree walk: it runs for every op a constructor
    calls."""
    devices = set()
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, torch.Tensor):
                devices.add(item.is_meta)
    return len(devices) == 2


def _to_fake(model: nn.Module, mode) -> nn.Module:
    """The meta-parameter ``model`` with every parameter, buffer and tensor attribute a fake
    tensor of ``mode`` (on the CPU, as if built inside it); shared tensors stay shared."""
    made: dict[int, torch.Tensor] = {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in made:
            if tensor.is_meta or isinstance(tensor, nn.Parameter):
                # A parameter, or a buffer a constructor made on its parameters' device (timm's
                # Swin: ``device=self.norm1.weight.device``): a fake CPU tensor of its shape, as
                # a meta one beside the fake CPU ones fails the forward (device mismatch).
                with mode:
                    made[id(tensor)] = torch.empty_strided(
                        tensor.shape, tensor.stride(), dtype=tensor.dtype
                    )
            else:
                made[id(tensor)] = mode.from_tensor(tensor)
            if isinstance(tensor, nn.Parameter):
                made[id(tensor)] = nn.Parameter(
                    made[id(tensor)], requires_grad=tensor.requires_grad
                )
        return made[id(tensor)]

    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    table[name] = fake(tensor)
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
                setattr(module, name, fake(value))
    return model


def without_dropout(model: nn.Module) -> nn.Module:
    """Every dropout of ``model`` set to p = 0 (``membench verify`` compares methods so)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def build_arch(
    name: str,
    classes: int,
    *,
    dropout: bool = True,
    objective: str | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """A freshly initialised module for ``name`` with ``classes`` outputs (a classifier), a
    ``LayerStack``, or for an ``hf:`` arch an ``HFTask`` (token ids and labels in, its loss out)
    training ``objective`` with ``attn_implementation`` (both the model's default when None, and
    only for ``hf:`` archs); ``dropout=False`` sets every dropout to 0. ArchError if the name
    resolves to nothing, the factory fails, or it returns something that is not an
    ``nn.Module``."""
    source = resolve_arch(name)
    options = {
        key: value
        for key, value in (("objective", objective), ("attn_implementation", attn_implementation))
        if value is not None
    }
    if source.kind in TOKEN_KINDS:
        options["dropout"] = dropout
    elif options:
        raise ArchError(
            f"--{next(iter(options)).replace('_', '-')} applies to hf: archs, not {name}"
        )
    try:
        # Under a fake-tensor mode the constructor runs on real tensors with meta parameters,
        # then the model becomes fake (``parameters_on_meta``): code that reads values while
        # building then works, and nothing is allocated.
        with unset_fake_temporarily() as mode:
            with parameters_on_meta() if mode is not None else contextlib.nullcontext():
                model = source.factory(num_classes=classes, **options)
        if mode is not None and isinstance(model, nn.Module):
            model = _to_fake(model, mode)
    except ArchError:
        raise
    except Exception as err:  # the factory is the user's code: report it, in one line
        raise ArchError(
            f"{source.where}(num_classes={classes}) failed for --arch {name}: {one_line(err)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ArchError(
            f"{source.where} (for --arch {name}) returned an object of type "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    return model if dropout else without_dropout(model)


def arch_kind(name: str) -> str:
    """``resolve_arch(name).kind``, a plugin's or an import path's module imported under the
    bound on probing user code (``bounded.call_bounded``: sys.exit or a hang is one line)."""
    from .bounded import call_bounded

    return call_bounded(lambda: resolve_arch(name).kind, f"importing --arch {name}")


def takes_tokens(name: str) -> bool:
    """Whether ``name``'s input is token sequences (a cell's ``seq``) rather than images."""
    return arch_kind(name) in TOKEN_KINDS
