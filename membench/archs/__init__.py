"""Architectures (docs/archs.md): what an arch name means, and the models.

- ``specs``: the shapes of membench's own archs, without torch (conv stacks, CIFAR ResNets);
- ``layers``: the layer-stack contract (``LayerStack``: a model as an ordered sequence of local
  units), which the layer-local methods and ``bp-deepsup`` need;
- ``conv_stack``: the paper's conv stacks; ``resnet``: He et al.'s CIFAR ResNets;
- ``registry``: where a name leads (membench's own, ``tv:NAME``, ``timm:NAME``, the
  ``membench.archs`` entry points, ``package.module:callable``) and ``build_arch``;
- ``probe``: whether an arch runs at a resolution, from one fake forward (``validate_arch``).

Every public name of these modules is importable from ``membench.archs``; a module (and torch
with it, but for ``specs``) is imported when one of its names is first used.
"""

from __future__ import annotations

import importlib

# Where each public name lives. Importing the package imports no torch (``specs`` needs none,
# so a grid can be checked without it); a name is imported from its module when first used.
_EXPORTS = {
    "conv_stack": ("ChannelLayerNorm", "ConvStack", "PROPAGATION_DROPOUT", "build_conv_stack"),
    "layers": ("Layer", "LayerStack", "LayerStackSpec", "check_contract"),
    "probe": ("ArchProbe", "is_layer_stack", "probe_arch", "refresh_registry", "validate_arch"),
    "registry": (
        "ENTRY_POINT_GROUP",
        "TIMM_PREFIX",
        "TORCHVISION_PREFIX",
        "ArchSource",
        "build_arch",
        "is_timm",
        "is_torchvision",
        "parameters_on_meta",
        "plugin_arch_names",
        "resolve_arch",
        "torchvision_model_names",
        "without_dropout",
    ),
    "resnet": ("BasicBlock", "CifarResNet", "build_cifar_resnet"),
    "specs": (
        "BUILTIN_ARCHS",
        "CIFAR_RESNETS",
        "PARAMETRIC_PATTERN",
        "PARAMETRIC_RULE",
        "RESNET_PATTERN",
        "RESNET_RULE",
        "ArchError",
        "CifarResNetSpec",
        "ConvStackSpec",
        "cifar_resnet_spec",
        "conv_stack_spec",
        "is_cifar_resnet",
        "is_conv_stack",
        "minimum_resolution",
        "parametric_spec",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def builtin_arch_names() -> list[str]:
    """membench's own named archs: the conv stacks, then the CIFAR ResNets."""
    from .specs import BUILTIN_ARCHS, CIFAR_RESNETS

    return [*BUILTIN_ARCHS, *CIFAR_RESNETS]


def __getattr__(name: str):
    """A public name, from its module (and torch with it, but for ``specs``) when first used."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted([*_MODULE_OF, "builtin_arch_names"])
