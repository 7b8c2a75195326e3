"""Hugging Face ``transformers`` models as archs, from a config with random weights: no download.

``hf:MODEL_TYPE`` is ``transformers.AutoConfig.for_model(MODEL_TYPE)``; ``?key=value&...``
overrides its fields (``hf:llama?hidden_size=2048&num_hidden_layers=16``; a value is read as
JSON where it is one: numbers, true/false, null, else text); ``hf:PATH/config.json[?...]`` reads
a local config file. The model is ``AutoModelFor<objective>.from_config`` (docs/sequence-models.md):

- ``causal-lm`` (``AutoModelForCausalLM``): a decoder's default, labels = the input ids, the
  loss transformers computes (shifted inside);
- ``masked-lm`` (``AutoModelForMaskedLM``): an encoder's default (a model type with a masked-LM
  head: BERT, RoBERTa, ...), 15 % of the positions labelled;
- ``classification`` (``AutoModelForSequenceClassification``): ``classes`` labels per sequence.

Nothing here reaches the hub: ``for_model`` and ``from_config`` build from the config alone, and
no tokenizer is loaded (the vocabulary size is the config's). The input of such a cell is token
ids, B x seq (``Cell.seq``). ``HFTask`` is what the BP runners train; ``as_layer_stack`` cuts its
base model into a ``TokenStack`` at its blocks for the layer-local methods and ``bp-deepsup``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from torch import nn

from ..errors import one_line
from ..schema import CAUSAL_LM, CLASSIFICATION, MASKED_LM
from .blocks import block_list
from .layers import TokenStack
from .specs import ArchError

HF_PREFIX = "hf:"
HF_MISSING = (
    "transformers is not installed: pip install 'membench[hf]' (or pip install transformers)"
)
# Of a masked-LM objective's positions, the share that carries a label (BERT's recipe: 15 %).
MASKED_SHARE = 0.15
IGNORE_INDEX = -100  # transformers' label for a position without a loss


def is_hf(name: str) -> bool:
    """Whether ``name`` is a transformers model from a config (``hf:...``)."""
    return name.startswith(HF_PREFIX)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ArchError(HF_MISSING) from None
    return transformers


def _value(text: str) -> object:
    """A query value: JSON where it parses (2048, 1e-5, true, null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_hf_name(name: str) -> tuple[str, dict[str, object]]:
    """``'hf:llama?hidden_size=2048'`` -> (``'llama'``, {'hidden_size': 2048}); the source is a
    model type or a path to a config.json."""
    source, _, query = name[len(HF_PREFIX) :].partition("?")
    if not source:
        raise ArchError(f"--arch {name!r}: hf: needs a model type (hf:gpt2) or a config.json path")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ArchError(f"--arch {name!r}: overrides are key=value pairs joined by &") from None
    return source, {key: _value(value) for key, value in pairs}


def _known_fields(config) -> set[str]:
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


@cache
def _config(name: str):
    """The config ``name`` stands for (cached; ``hf_config`` hands out copies)."""
    transformers = _transformers()
    source, overrides = parse_hf_name(name)
    base: dict = {}
    if source.endswith(".json") or "/" in source:
        path = Path(source)
        try:
            base = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ArchError(f"--arch {name}: cannot read {path}: {one_line(err)}") from None
        if not isinstance(base, dict) or "model_type" not in base:
            raise ArchError(f"--arch {name}: {path} is not a transformers config (no model_type)")
        source = base.pop("model_type")
    try:
        default = transformers.AutoConfig.for_model(source)
    except ValueError:
        raise ArchError(
            f"unknown transformers model type {source!r} for --arch {name}; see "
            "transformers.CONFIG_MAPPING (gpt2, llama, bert, ...)"
        ) from None
    unknown = sorted(set(overrides) - _known_fields(default))
    if unknown:
        raise ArchError(
            f"--arch {name}: {source} configs have no field {unknown[0]!r} (a typo would "
            "otherwise be ignored); see its config class"
        )
    try:
        return transformers.AutoConfig.for_model(source, **{**base, **overrides})
    except Exception as err:  # the config class's own checks (e.g. heads not dividing width)
        raise ArchError(f"--arch {name}: {one_line(err)}") from None


def hf_config(name: str):
    """A fresh copy of the transformers config of an ``hf:`` arch; ArchError (one line) for a
    model type transformers does not know, an unknown field or an unreadable file."""
    return copy.deepcopy(_config(name))


def objectives(name: str) -> tuple[str, ...]:
    """The objectives an ``hf:`` arch has a head for, its default first: ``masked-lm`` for an
    encoder (a model type with a masked-LM head), else ``causal-lm``; then ``classification``."""
    from transformers.models.auto import modeling_auto as auto

    model_type = _config(name).model_type
    found = []
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        found.append(MASKED_LM)
    elif model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        found.append(CAUSAL_LM)
    if model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        found.append(CLASSIFICATION)
    if not found:
        raise ArchError(f"--arch {name}: transformers has no LM or classification head for it")
    return tuple(found)


def objective_of(name: str, objective: str | None) -> str:
    """The objective a cell trains: the one asked for, else the arch's default; ArchError for
    one the model type has no head for."""
    choices = objectives(name)
    if objective is None:
        return choices[0]
    if objective not in choices:
        raise ArchError(f"--objective {objective}: {name} has heads for {', '.join(choices)} only")
    return objective


def is_causal(name: str) -> bool:
    """Whether the arch's blocks attend causally (a decoder), whatever head it trains."""
    return objectives(name)[0] == CAUSAL_LM or bool(getattr(_config(name), "is_decoder", False))


def vocabulary_size(name: str) -> int:
    """The size of the arch's vocabulary, from its config: the token ids of its input."""
    return int(_config(name).vocab_size)


def max_sequence(name: str) -> int | None:
    """The longest sequence the config allows (``max_position_embeddings``; GPT-2's
    ``n_positions``), or None where it names none."""
    value = getattr(_config(name), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def check_sequence(name: str, seq: int) -> None:
    """ArchError if ``seq`` is past the config's positions: a learned position table has no row
    for it (fake tensors, which never read an index, would not notice)."""
    longest = max_sequence(name)
    if longest is not None and seq > longest:
        raise ArchError(
            f"{name} has {longest} positions (max_position_embeddings), fewer than --seq "
            f"{seq}; raise it with ?max_position_embeddings={seq} (GPT-2: ?n_positions={seq})"
        )


def _without_dropout(config) -> None:
    """Every dropout probability of the config set to 0 (``membench verify`` compares so)."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)


class HFTask(nn.Module):
    """A transformers model with its objective's head: ``forward(input_ids, labels)`` is the loss
    transformers computes for it, as a training loop of its own would call it."""

    def __init__(self, model: nn.Module, objective: str, causal: bool):
        super().__init__()
        self.model = model
        self.objective = objective
        self.causal = causal

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, labels=labels).loss

    def as_layer_stack(self) -> TokenStack:
        """The base model (without the objective's head) cut at its blocks (``hf_layer_stack``)."""
        return hf_layer_stack(self.model.base_model, self.causal)


def build_hf(
    name: str,
    classes: int,
    *,
    objective: str | None = None,
    attn_implementation: str | None = None,
    dropout: bool = True,
) -> HFTask:
    """The ``hf:`` arch ``name`` with random weights, for ``objective`` (the arch's default when
    None) and transformers' ``attn_implementation`` (its default when None); ``dropout=False``
    sets every dropout probability of the config to 0. ArchError (one line) if transformers
    refuses (an attention implementation it does not have here, e.g. flash without its package)."""
    transformers = _transformers()
    objective = objective_of(name, objective)
    config = hf_config(name)
    config.use_cache = False  # training: no key/value cache kept for generation
    if not dropout:
        _without_dropout(config)
    if objective == CLASSIFICATION:
        config.num_labels = classes
        if getattr(config, "pad_token_id", None) is None:
            # GPT-style classifiers read the last token that is not padding; they need an id for
            # padding, and their users give the end-of-text one.
            config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    auto = {
        CAUSAL_LM: transformers.AutoModelForCausalLM,
        MASKED_LM: transformers.AutoModelForMaskedLM,
        CLASSIFICATION: transformers.AutoModelForSequenceClassification,
    }[objective]
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = auto.from_config(config, **options)
    except Exception as err:  # transformers' own refusal, in one line
        raise ArchError(f"{auto.__name__}.from_config for --arch {name}: {one_line(err)}") from None
    return HFTask(model, objective, is_causal(name))


def token_labels(
    name: str, objective: str | None, input_ids: torch.Tensor, classes: torch.Tensor, generator
) -> torch.Tensor:
    """The labels of ``input_ids`` for the objective: ``causal-lm``, the ids themselves (one
    tensor; transformers shifts them); ``masked-lm``, random ids at MASKED_SHARE of the
    positions and IGNORE_INDEX elsewhere; ``classification``, ``classes`` (one per sequence)."""
    objective = objective_of(name, objective)
    if objective == CAUSAL_LM:
        return input_ids
    if objective == MASKED_LM:
        labelled = torch.rand(input_ids.shape, generator=generator) < MASKED_SHARE
        labels = torch.randint(0, vocabulary_size(name), input_ids.shape, generator=generator)
        return labels.masked_fill(~labelled, IGNORE_INDEX)
    return classes


def token_batch(name: str, objective: str | None, batch: int, seq: int, classes: int, generator):
    """A synthetic batch for an ``hf:`` cell: token ids uniform over the vocabulary, B x seq, and
    the objective's labels (``token_labels``; a class per sequence uniform in [0, classes))."""
    input_ids = torch.randint(0, vocabulary_size(name), (batch, seq), generator=generator)
    per_sequence = torch.randint(0, classes, (batch,), generator=generator)
    return input_ids, token_labels(name, objective, input_ids, per_sequence, generator)


@contextlib.contextmanager
def as_on_real_tensors() -> Iterator[None]:
    """While open, transformers answers what it reads from a batch's values as it would for
    membench's synthetic batch, where fake tensors have no values to read.

    Its causal mask reads the position ids to find sequences packed into one row
    (``masking_utils.find_packed_sequence_indices``); on fake tensors it cannot, keeps them, and
    builds a B x 1 x S x S mask that a real run never has (and, on CUDA, that rules out flash
    attention). membench's positions are always 0 .. S-1, one sequence per row, so the answer on
    real tensors is "none packed" (None), given here without reading them. A no-op without
    transformers."""
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


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
