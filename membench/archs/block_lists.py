"""The repeated blocks of a model: where checkpointing, FSDP2's sharding and the layer stack of a
transformer cut it.

A model built by someone else (torchvision, timm, ``transformers``) names its blocks its own way
(``encoder.layers``, ``blocks``, ``transformer.h``, ``model.layers``, ``bert.encoder.layer``); they
are found without names as the container of repeated modules below the top level that holds the
most parameters.
"""

from __future__ import annotations

from torch import nn


def parameter_count(module: nn.Module) -> int:
    """Every parameter element of ``module`` (a shared one once)."""
    return sum(p.numel() for p in module.parameters())


def largest_block_list(
    model: nn.Module,
    kinds: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList),
    members: int = 2,
) -> tuple[str, nn.Module] | None:
    """The container of ``kinds`` below the top level, with at least ``members`` members, that
    holds the most parameters (a ViT's ``encoder.layers``, a MaxViT's ``blocks``, a GPT's
    ``transformer.h``), with its dotted name; None when there is none."""
    best, most = None, 0
    for name, module in model.named_modules():
        if name and isinstance(module, kinds) and len(module) >= members:
            count = parameter_count(module)
            if count > most:
                best, most = (name, module), count
    return best


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """A transformer's blocks: the ``ModuleList`` that holds the most parameters (``transformer.h``
    of GPT-2, ``model.layers`` of Llama, ``bert.encoder.layer`` of BERT), with its dotted name;
    a model of one block has a list of one."""
    return largest_block_list(model, (nn.ModuleList,), members=1)
