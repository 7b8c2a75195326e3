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
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from torch import nn

from ..errors import one_line
from ..schema import CAUSAL_LM, CLASSIFICATION, MASKED_LM
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
        """The base model (without the objective's head) cut at its blocks
        (``membench.archs.hf_stack.hf_layer_stack``)."""
        from .hf_stack import hf_layer_stack

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
