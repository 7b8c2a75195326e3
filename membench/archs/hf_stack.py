"""A transformers model cut at its blocks: the ``TokenStack`` the layer-local methods and
``bp-deepsup`` train (docs/sequence-models.md, "Layer-local training over blocks").

``hf_layer_stack`` finds the blocks without the model's names (the ``ModuleList`` with the most
parameters), the stem before them and the final norm after them from one forward of a few
tokens, and calls each block as the model's own forward does: its arguments (attention mask,
position ids, rotary tables) rebuilt from the hidden states' shape by ``LayerContext`` and checked
against what the model passed its first block when the stack is built.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .block_lists import block_list
from .layers import TokenStack
from .specs import ArchError


# -- the layer stack of a transformers model -------------------------------------------------
class _Entered(Exception):
    """Raised by the first block's pre-hook: the model's forward has computed the input of its
    first block (``HFEntry`` stops it there)."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("first block entered")
        self.args, self.kwargs = args, kwargs


def _stop(module, args, kwargs):
    raise _Entered(args, kwargs)


def _first_block_input(base: nn.Module, first: nn.Module, input_ids: torch.Tensor):
    """Run ``base``'s forward on ``input_ids`` up to its first block: that block's (args,
    kwargs), as the model passes them."""
    handle = first.register_forward_pre_hook(_stop, with_kwargs=True)
    try:
        base(input_ids=input_ids)
    except _Entered as entered:
        return entered.args, entered.kwargs
    finally:
        handle.remove()
    raise ArchError(f"{type(base).__name__}'s forward never called its first block")


class HFEntry(nn.Module):
    """What a transformers model runs before its first block (token and position embeddings,
    their dropout and norm, rotary tables), as the first unit's stem: the model's own forward,
    stopped where it enters the first block. Owns the stem's modules; refers to the model and
    its first block without owning them (they are other units' or that unit's own)."""

    def __init__(self, base: nn.Module, first: nn.Module, stem: dict[str, nn.Module]):
        super().__init__()
        self.stem = nn.ModuleDict(stem)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_first", first)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        args, kwargs = _first_block_input(self._base, self._first, input_ids)
        return args[0] if args else kwargs["hidden_states"]


class LayerContext:
    """What a transformers model hands each of its blocks besides the hidden states, rebuilt
    from the hidden states' shape as the model's forward builds it: the attention mask
    (transformers' ``create_causal_mask``/``create_bidirectional_mask``), the position ids,
    the rotary tables (the model's ``rotary_emb``), and the constants (``use_cache=False``, a
    missing cache). ``keys`` are the arguments the model passes (found by ``hf_layer_stack``)."""

    REBUILT = ("attention_mask", "position_ids", "position_embeddings")

    def __init__(self, config, causal: bool, rotary: nn.Module | None, keys, constants: dict):
        self.config, self.causal, self.rotary = config, causal, rotary
        self.keys, self.constants = tuple(keys), dict(constants)

    def __call__(self, hidden: torch.Tensor) -> dict:
        from transformers import masking_utils

        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        values: dict[str, object] = dict(self.constants)
        if "attention_mask" in self.keys:
            if self.causal:
                values["attention_mask"] = masking_utils.create_causal_mask(
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=None,
                    cache=None,
                    position_ids=positions,
                )
            else:
                values["attention_mask"] = masking_utils.create_bidirectional_mask(
                    config=self.config, inputs_embeds=hidden, attention_mask=None
                )
        if "position_ids" in self.keys:
            values["position_ids"] = positions
        if "position_embeddings" in self.keys:
            values["position_embeddings"] = self.rotary(hidden, positions)
        return values


class HFBlock(nn.Module):
    """One block of a transformers model as a unit of its ``TokenStack``: the block called as the
    model calls it (its ``LayerContext``); the first unit starts with the model's stem
    (``HFEntry``, token ids in), the last ends with what the model runs after its blocks (the
    final norm). Maps B x S to B x S x H (the first) or B x S x H to B x S x H."""

    def __init__(
        self,
        block: nn.Module,
        context: LayerContext,
        entry: HFEntry | None = None,
        tail: tuple[nn.Module, ...] = (),
    ):
        super().__init__()
        self.entry = entry
        self.block = block
        self.tail = nn.ModuleList(tail)
        object.__setattr__(self, "_context", context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        out = self.block(x, **self._context(x))
        z = out[0] if isinstance(out, tuple) else out
        for module in self.tail:
            z = module(z)
        return z


def _call_record(base: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor):
    """One forward of ``base``: the order its direct children finished in (with each output;
    ``""`` marks the last block), and the arguments of its first block, by parameter name."""
    order: list[tuple[str, object]] = []
    first_call: list[tuple[tuple, dict]] = []
    handles = [
        child.register_forward_hook(lambda m, a, out, n=name: order.append((n, out)))
        for name, child in base.named_children()
        if child is not blocks
    ]
    handles.append(blocks[-1].register_forward_hook(lambda m, a, out: order.append(("", out))))
    handles.append(
        blocks[0].register_forward_pre_hook(
            lambda m, args, kwargs: first_call.append((args, kwargs)), with_kwargs=True
        )
    )
    try:
        with torch.no_grad():
            base(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    signature = inspect.signature(blocks[0].forward)
    args, kwargs = first_call[0]
    passed = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            passed.update(passed.pop(name, {}) or {})
    passed.pop(next(iter(signature.parameters)))  # the hidden states
    return order, passed


def _same_structure(ours: object, theirs: object) -> bool:
    """Whether a rebuilt argument matches the model's: None with None, tensors of one shape and
    dtype (and values, on real tensors), tuples member by member."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(theirs, (tuple, list)):
        return (
            isinstance(ours, (tuple, list))
            and len(ours) == len(theirs)
            and all(map(_same_structure, ours, theirs))
        )
    if isinstance(theirs, torch.Tensor):
        if not isinstance(ours, torch.Tensor) or ours.shape != theirs.shape:
            return False
        if ours.dtype != theirs.dtype:
            return False
        return isinstance(theirs, FakeTensor) or bool(torch.equal(ours, theirs))
    return ours == theirs if not callable(theirs) else ours is theirs


def hf_layer_stack(base: nn.Module, causal: bool, probe_length: int = 4) -> TokenStack:
    """A transformers base model as a ``TokenStack``: unit 0 its stem and first block, unit l its
    block l, the last unit's block followed by the final norm. Found without the model's names
    by one forward of ``probe_length`` tokens: the blocks are the ``ModuleList`` with the most
    parameters; the stem the children run before them, the tail those run after them that keep
    the hidden states' shape (a pooler, B x H, is the head's). Each block's arguments are
    rebuilt (``LayerContext``) and checked against what the model passed; ArchError (one line)
    for a model whose blocks take something membench cannot rebuild."""
    found = block_list(base)
    name = type(base).__name__
    if found is None:
        raise ArchError(f"{name} has no list of blocks to cut into units")
    blocks = found[1]
    device = next(base.parameters()).device
    input_ids = torch.zeros(1, probe_length, dtype=torch.long, device=device)
    order, passed = _call_record(base, blocks, input_ids)
    at_blocks = next(index for index, (child, _) in enumerate(order) if child == "")
    children = dict(base.named_children())
    stem = {n: children[n] for n, _ in order[:at_blocks]}
    hidden_shape = None
    tail = []
    for child, out in order[at_blocks + 1 :]:
        if isinstance(out, torch.Tensor) and out.dim() == 3:
            hidden_shape = hidden_shape or out.shape
            if out.shape == hidden_shape and child not in stem:
                tail.append(children[child])
    rotary = next((m for m in stem.values() if "rotary" in type(m).__name__.lower()), None)
    # What the model passes as None (BERT's position ids, an sdpa model's causal mask, which
    # the kernel applies itself) stays None.
    keys = [
        key for key, value in passed.items() if key in LayerContext.REBUILT and value is not None
    ]
    constants = {k: v for k, v in passed.items() if k not in keys}
    tensors = [k for k, v in constants.items() if isinstance(v, torch.Tensor)]
    if tensors or ("position_embeddings" in keys and rotary is None):
        raise ArchError(
            f"{name}'s blocks take {', '.join(tensors) or 'rotary tables'}, which membench "
            "cannot rebuild per unit; the layer-local methods cannot split it"
        )
    context = LayerContext(base.config, causal, rotary, keys, constants)
    first = blocks[0]
    with torch.no_grad():
        hidden = HFEntry(base, first, stem)(input_ids)
        ours = context(hidden)
    wrong = [k for k in keys if not _same_structure(ours[k], passed[k])]
    if wrong:
        raise ArchError(
            f"{name}: the {', '.join(wrong)} membench rebuilds for its blocks differ from "
            "the model's own; the layer-local methods cannot split it"
        )
    units = [
        HFBlock(
            block,
            context,
            entry=HFEntry(base, first, stem) if index == 0 else None,
            tail=tuple(tail) if index == len(blocks) - 1 else (),
        )
        for index, block in enumerate(blocks)
    ]
    width = int(base.config.hidden_size)
    return TokenStack(units, [width] * len(units), name=f"{name} blocks")
