"""``PYTORCH_CUDA_ALLOC_CONF`` parsed as PyTorch 2.14 parses it (c10/core/AllocatorConfig.cpp,
c10/cuda/CUDAAllocatorConfig.cpp): the values it accepts, the ones it refuses, one line each."""

from __future__ import annotations

import pytest

from membench.errors import InputError
from membench.planning.allocator import conf as alloc_conf
from membench.planning.allocator.conf import (
    SIZE_MAX,
    AllocatorConfig,
    AllocatorConfigError,
    alloc_conf_from_env,
    parse_alloc_conf,
)
from membench.planning.allocator.model import CachingAllocatorModel

M = 1024 * 1024


def test_no_config_is_pytorchs_defaults():
    config = parse_alloc_conf(None)
    assert config == parse_alloc_conf("") == AllocatorConfig()
    assert (
        config.max_split_size,
        config.max_non_split_rounding,
        config.large_segment_size,
        config.expandable_segments,
    ) == (SIZE_MAX, 20 * M, 20 * M, False)
    assert set(config.roundup_power2_divisions) == {0}


def test_the_usual_keys():
    config = parse_alloc_conf(
        "expandable_segments:True,max_split_size_mb:128,roundup_power2_divisions:4"
    )
    assert config.expandable_segments
    assert config.max_split_size == 128 * M
    assert config.roundup_power2_divisions == (4,) * 16
    assert config.text.startswith("expandable_segments")


def test_spaces_are_ignored_and_a_trailing_comma_is_accepted():
    # ConfigTokenizer drops whitespace; parseArgs stops after a final ','
    assert (
        parse_alloc_conf(" max_split_size_mb : 128 , expandable_segments: False ,").max_split_size
        == 128 * M
    )


def test_a_later_key_wins():
    assert parse_alloc_conf("max_split_size_mb:64,max_split_size_mb:32").max_split_size == 32 * M


def test_interval_list_sets_from_each_boundary_and_gt_fills_the_rest():
    config = parse_alloc_conf("roundup_power2_divisions:[256:1,512:2,1024:4,>:8]")
    # interval i holds sizes in [2**(20+i), 2**(21+i)): 256 MiB is interval 8
    assert config.roundup_power2_divisions == (1,) * 9 + (2, 4) + (8,) * 5
    assert config.divisions_for(300 * M) == 1
    assert config.divisions_for(600 * M) == 2
    assert config.divisions_for(1500 * M) == 4
    assert config.divisions_for(5000 * M) == 8
    assert config.divisions_for(1000) == 1  # under 1 MiB: the first interval


def test_large_segment_size_moves_the_other_bounds_whatever_its_place():
    config = parse_alloc_conf("max_split_size_mb:64,large_segment_size_mb:64")
    assert (config.large_segment_size, config.max_non_split_rounding) == (64 * M, 64 * M)
    with pytest.raises(AllocatorConfigError, match="must be >= 64"):
        parse_alloc_conf("max_split_size_mb:32,large_segment_size_mb:64")


def test_keys_of_other_allocators_parts_are_accepted_and_change_nothing_modelled():
    text = (
        "backend:native,pinned_use_cuda_host_register:True,pinned_num_register_threads:8,"
        "release_lock_on_cudamalloc:True,graph_capture_record_stream_reuse:False,"
        "pinned_max_round_threshold_mb:8,pinned_max_cached_size_mb:64,"
        "pinned_reserve_segment_size_mb:4,pinned_free_catch_all:True,"
        "throw_on_cudamalloc_oom:False,pinned_use_background_threads:True"
    )
    assert parse_alloc_conf(text) == AllocatorConfig(text=text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("expandable_segment:True", "unknown key 'expandable_segment'"),
        ("max_split_size:128", "unknown key 'max_split_size'"),
        ("expandable_segments:true", "needs True or False"),
        ("max_split_size_mb:19", "too small, must be >= 20"),
        ("max_split_size_mb:big", "needs a whole number"),
        ("max_split_size_mb:-30", "needs a whole number"),
        ("max_split_size_mb", "ended where ':' was expected"),
        ("max_split_size_mb:", "ended where a number"),
        ("max_split_size_mb:128:3", "expected ',', found ':'"),
        ("max_non_split_rounding_mb:10", "too small"),
        ("large_segment_size_mb:10", "must be > 10"),
        ("roundup_power2_divisions:3", "must be a power of 2"),
        ("roundup_power2_divisions:0", "must be a power of 2"),
        ("roundup_power2_divisions:[300:2]", "interval 300 is not a power of 2"),
        ("roundup_power2_divisions:[256:3]", "must be 0 or a power of 2"),
        ("roundup_power2_divisions:[256:2", "ended where an interval"),
        ("garbage_collection_threshold:1.5", "must be in (0.0, 1.0)"),
        ("garbage_collection_threshold:nan", "finite"),
        ("per_process_memory_fraction:2", "must be in [0.0, 1.0]"),
        ("backend:cudaMalloc", "backend must be native or cudaMallocAsync"),
        ("pinned_num_register_threads:3", "power of 2 no larger than 128"),
        ("pinned_reserve_segment_size_mb:0", "greater than 0"),
    ],
)
def test_what_pytorch_refuses_is_a_one_line_input_error(text, needle):
    with pytest.raises(AllocatorConfigError) as err:
        parse_alloc_conf(text)
    assert needle in str(err.value)
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "mutate"),
    [
        (
            "max_split_size:128",
            lambda mp: mp.setattr(
                alloc_conf, "KNOWN_KEYS", alloc_conf.KNOWN_KEYS | {"max_split_size"}
            ),
        ),
        (
            "roundup_power2_divisions:3",
            lambda mp: mp.setattr(alloc_conf, "_power_of_two", lambda value: True),
        ),
    ],
)
def test_the_refusals_can_fail(text, mutate, monkeypatch):
    mutate(monkeypatch)
    parse_alloc_conf(text)  # accepted once the check is broken


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("backend:cudaMallocAsync", "cudaMallocAsync is not modelled"),
        ("per_process_memory_fraction:0.5", "per_process_memory_fraction below 1 is not modelled"),
    ],
)
def test_the_model_refuses_what_it_does_not_model(text, needle):
    config = parse_alloc_conf(text)  # PyTorch accepts these
    with pytest.raises(AllocatorConfigError, match=needle):
        CachingAllocatorModel(config)


def test_the_environment_is_read_in_pytorchs_order():
    assert alloc_conf_from_env({}) == ""
    assert alloc_conf_from_env({"PYTORCH_ALLOC_CONF": "a", "PYTORCH_CUDA_ALLOC_CONF": "b"}) == "b"
    assert alloc_conf_from_env({"PYTORCH_ALLOC_CONF": "a"}) == "a"
