"""The device total: replays of hand-made step streams whose reserve, workspace and slack are
derived by hand from the allocator's rules (docs/allocator.md) and workspace.py, the budget
judged with the allocator's release of cached blocks, and the term that decides. Each check is
shown failing on a mutant of the rule it checks."""

from __future__ import annotations

import pytest

from membench.planning import device_total
from membench.planning.allocator.conf import parse_alloc_conf
from membench.planning.device_profiles import parse_device_table
from membench.planning.device_total import (
    START,
    DeviceTerms,
    Workspaces,
    deciding_term,
    describe_terms,
    judged_bytes,
    replay_step,
    step_terms,
    terms_of,
)
from membench.planning.workspace import ConvCall

MIB = 2**20
GIB = 2**30
DEFAULT = parse_alloc_conf("")
CUBLAS = 8 * MIB + 128 * 1024  # torch's default cuBLAS workspace below compute capability 9
# a convolution whose lowered matrix is 30 MiB: 1 image x 1 channel x 1 tap x 7,864,320 x 4 B
CONV_30MIB = ConvCall("forward", (1, 1, 1, 7864320), (1, 1, 1, 7864320), (1,), 4)


def test_tensors_alone_a_6mib_block_takes_a_20mib_segment():
    replay = replay_step(
        [START, ("alloc", 1, 6 * MIB), ("free", 1, 6 * MIB)], DEFAULT, Workspaces()
    )
    terms = terms_of(6 * MIB, replay, 0)
    # under 10 MiB a large request gets a 20 MiB segment (get_allocation_size)
    assert (terms.peak_reserved, terms.workspace, terms.reserve_slack) == (20 * MIB, 0, 14 * MIB)


def check_two_cublas_workspaces(workspaces: Workspaces) -> None:
    replay = replay_step([START], DEFAULT, workspaces)
    # both 8.125 MiB workspaces split one 20 MiB segment (the 3.75 MiB left is > 1 MiB: split);
    # the reserve peaked with the first, 11.875 MiB of its segment then unallocated
    slack, fragmentation = 20 * MIB - 2 * CUBLAS, 20 * MIB - CUBLAS
    assert terms_of(0, replay, 0) == DeviceTerms(0, 2 * CUBLAS, slack, 0, fragmentation)


def test_the_forward_and_backward_cublas_workspaces_share_one_segment():
    check_two_cublas_workspaces(Workspaces(CUBLAS, 2))
    with pytest.raises(AssertionError):  # mutant: one workspace per step, not per thread
        check_two_cublas_workspaces(Workspaces(CUBLAS, 1))
    # Hopper's 32 MiB workspaces are at least 10 MiB: a segment of their own, no slack
    hopper = replay_step([START], DEFAULT, Workspaces(32 * MIB, 2))
    assert (hopper.peak_reserved, hopper.peak_requested) == (64 * MIB, 64 * MIB)


CONV_STEP = [START, ("alloc", 1, 40 * MIB), CONV_30MIB, ("free", 1, 40 * MIB)]


def check_elastic_conv_workspace() -> None:
    free = replay_step(CONV_STEP, DEFAULT, Workspaces(conv_ratio=1.0))
    # a 40 MiB tensor, then the 30 MiB workspace in a segment of its own
    assert terms_of(40 * MIB, free, 0) == DeviceTerms(40 * MIB, 30 * MIB, 0, 0, 0)
    tight = replay_step(CONV_STEP, DEFAULT, Workspaces(conv_ratio=1.0), capacity=50 * MIB)
    # under 50 MiB the workspace cannot be had: cuDNN takes a plan without it, no OOM
    assert (tight.out_of_memory, tight.skipped_workspaces, tight.peak_reserved) == (
        False,
        1,
        40 * MIB,
    )


def test_a_convolution_workspace_is_elastic(monkeypatch):
    check_elastic_conv_workspace()

    def rigid(model, size):  # mutant: a workspace that must fit, like a tensor
        model.free(model.malloc(size))
        return 0

    monkeypatch.setattr(device_total, "conv_workspace", rigid)
    with pytest.raises(AssertionError):
        check_elastic_conv_workspace()


CARD = {
    "compute_capability": "8.0",
    "memory": {"value": "1GiB", "source": "s"},
    "usable": {"value": "1GiB", "source": "s"},
    "context": {"value": "10MiB", "source": "s"},
    "context_eager": {"value": "20MiB", "source": "s"},
}
# a 30 MiB tensor freed and cached, then a 32 MiB one it cannot serve: 62 MiB reserved unless
# the allocator releases the cached segment, as it does before it would fail
RELEASE_STEP = [
    START,
    ("alloc", 1, 30 * MIB),
    ("free", 1, 30 * MIB),
    ("alloc", 2, 32 * MIB),
    ("free", 2, 32 * MIB),
]


def check_budget_judged_with_cache_release() -> None:
    profile = parse_device_table("card", "NVIDIA A100-SXM4-40GB", CARD)
    step = dict(tensors=32 * MIB, gemm_threads=(), profile=profile)
    free = step_terms(RELEASE_STEP, **step)
    assert (free.peak_reserved, free.reserve_slack, free.total) == (62 * MIB, 30 * MIB, 72 * MIB)
    # a 50 MiB budget: 40 MiB for the allocator after the context; it releases the cached 30
    fits = step_terms(RELEASE_STEP, budget=50 * MIB, **step)
    assert (fits.out_of_memory, fits.peak_reserved, fits.total) == (False, 32 * MIB, 42 * MIB)
    # 35 MiB: 25 for the allocator, less than the first tensor: out of memory, full figures
    over = step_terms(RELEASE_STEP, budget=35 * MIB, **step)
    assert (over.out_of_memory, over.total) == (True, 72 * MIB)
    # judged by the reserve alone, the context takes nothing from the budget
    reserve = step_terms(RELEASE_STEP, budget=35 * MIB, fit_by="reserved", **step)
    assert (reserve.out_of_memory, reserve.peak_reserved) == (False, 32 * MIB)


def test_a_budget_is_judged_after_the_allocator_releases_cached_blocks(monkeypatch):
    check_budget_judged_with_cache_release()
    original = device_total.replay_step

    def no_capacity(events, config, workspaces, capacity=None, device_memory=None):
        return original(events, config, workspaces, None, device_memory)  # mutant: no release

    monkeypatch.setattr(device_total, "replay_step", no_capacity)
    with pytest.raises(AssertionError):
        check_budget_judged_with_cache_release()


def test_expandable_segments_remove_the_slack_of_the_release_step():
    # one expandable segment per pool grows by 20 MiB pages: 32 MiB needs two pages, and the
    # freed 30 MiB (two pages) serves the 32 MiB request by growing (docs/allocator.md)
    replay = replay_step(RELEASE_STEP, parse_alloc_conf("expandable_segments:True"), Workspaces())
    assert replay.peak_reserved == 40 * MIB


VALUES = {
    "peak_allocated_bytes": 6 * GIB,
    "workspace_bytes": 1 * GIB,
    "reserve_slack_bytes": 2 * GIB,
    "context_bytes": 1 * GIB,
    "peak_reserved_bytes": 9 * GIB,
    "device_total_bytes": 10 * GIB,
}


def check_deciding_terms() -> None:
    # the budget fills tensors (6), workspace (7), reserve slack (9), context (10)
    assert deciding_term(VALUES, 8 * GIB) == "reserve_slack"
    assert deciding_term(VALUES, int(9.5 * GIB)) == "context"
    assert deciding_term(VALUES, 10 * GIB) == "tensors"  # it fits: the largest term
    assert deciding_term(VALUES, 8 * GIB, "reserved") == "reserve_slack"
    assert deciding_term(VALUES, 5 * GIB, "allocated") == "tensors"


def test_the_term_that_decides_a_budget(monkeypatch):
    check_deciding_terms()
    assert deciding_term({**VALUES, "context_bytes": None}, 8 * GIB) == ""
    assert judged_bytes(VALUES, "total") == 10 * GIB
    assert judged_bytes(VALUES, "reserved") == 9 * GIB
    assert describe_terms(VALUES, "reserved") == (
        "tensors 6.00 + workspace 1.00 + reserve slack 2.00 GiB"
    )
    reversed_terms = {k: tuple(reversed(v)) for k, v in device_total.JUDGED_TERMS.items()}
    monkeypatch.setattr(device_total, "JUDGED_TERMS", reversed_terms)  # mutant: context first
    with pytest.raises(AssertionError):
        check_deciding_terms()


def test_terms_add_up_to_the_device_total():
    terms = DeviceTerms(6, 1, 2, 3)
    assert terms.peak_reserved == 9 and terms.total == 12
    assert terms.as_columns() == {
        "peak_reserved_bytes": 9,
        "device_total_bytes": 12,
        "context_bytes": 3,
        "workspace_bytes": 1,
        "reserve_slack_bytes": 2,
    }


# Before the steps a 6 MiB block (a gradient) in a 20 MiB segment, [0,6) and 14 MiB free. The
# step: a 14 MiB temporary, its new 6 MiB gradient, the old one freed.
GRADIENT_STEP = [
    ("alloc", "g0", 6 * MIB),
    START,
    ("alloc", "t", 14 * MIB),
    ("free", "t", 14 * MIB),
    ("alloc", "g1", 6 * MIB),
    ("free", "g0", 6 * MIB),
]


def check_repeated_gradient_step() -> None:
    replay = replay_step(GRADIENT_STEP, DEFAULT, Workspaces())
    # step 1: t fits the free [6,20) exactly; g1 splits it again, [6,12); freeing g0 leaves
    # [0,6) and [12,20) free: nothing for a 14 MiB block. Step 2's t takes a segment of its own
    # (>= 10 MiB: 14 MiB, rounded to 2 MiB), 34 MiB in all; its g2 takes [0,6), freeing g1
    # merges [6,20) again. Step 3 finds what it needs cached (t: [6,20), the older of two
    # 14 MiB blocks): nothing more, so the repetitions stop after two.
    assert (replay.peak_reserved, replay.repeats) == (34 * MIB, 2)


def test_a_step_repeated_needs_the_segment_its_first_run_did_not(monkeypatch):
    check_repeated_gradient_step()
    monkeypatch.setattr(device_total, "MAX_REPEATS", 0)  # mutant: the recorded step alone
    with pytest.raises(AssertionError):
        check_repeated_gradient_step()
    assert replay_step(GRADIENT_STEP, DEFAULT, Workspaces()).peak_reserved == 20 * MIB


def test_a_repeated_step_frees_the_survivor_of_the_same_size_in_order():
    events = [
        ("alloc", "a", 4 * MIB),
        ("alloc", "b", 2 * MIB),
        ("alloc", "c", 4 * MIB),
        START,
        ("free", "c", 4 * MIB),
        ("alloc", "x", 2 * MIB),
        ("alloc", "y", 4 * MIB),
        ("alloc", "z", 4 * MIB),
        ("free", "a", 4 * MIB),
        ("free", "b", 2 * MIB),
    ]
    unit = device_total.repeated_steps(events)
    # survivors x (2 MiB), y, z (4 MiB); c, the first 4 MiB freed, is replaced by y, a by z
    assert [unit.steps[i][1] for i in unit.survivors] == ["x", "y", "z"]
    assert unit.pre_freed == {0: 1, 4: 2, 5: 0}


def test_steps_that_are_none_or_free_what_they_never_held_are_not_repeated():
    assert device_total.repeated_steps(GRADIENT_STEP[:1]) is None  # no START
    assert replay_step(GRADIENT_STEP[:1], DEFAULT, Workspaces()).repeats == 0
    assert device_total.repeated_steps([START, ("free", "never", MIB)]) is None


def test_a_block_from_before_that_nothing_replaces_is_freed_once():
    # before the steps, besides g0, a 4 MiB block the step lets go of and leaves nothing for
    events = [
        ("alloc", "g0", 6 * MIB),
        ("alloc", "junk", 4 * MIB),
        START,
        ("alloc", "t", 14 * MIB),
        ("free", "t", 14 * MIB),
        ("alloc", "g1", 6 * MIB),
        ("free", "g0", 6 * MIB),
        ("free", "junk", 4 * MIB),
    ]
    unit = device_total.repeated_steps(events)
    assert (unit.pre_freed, unit.kept) == ({3: 0}, [])  # g1 replaces g0; junk: nothing
    replay = replay_step(events, DEFAULT, Workspaces())
    # S1 (20 MiB): g0 [0,6), junk [6,10). t gets S2 (14 MiB), g1 [10,16), then [0,10) is free:
    # 34 MiB. The repetition: t in S2, g2 [0,6), g1 freed; junk is not freed again. Nothing more
    # reserved: one repetition.
    assert (replay.peak_reserved, replay.repeats) == (34 * MIB, 1)


KEPT_STEP = [*GRADIENT_STEP, ("alloc", "kept", 512 * 1024)]


def check_kept_block_freed_first() -> None:
    replay = replay_step(KEPT_STEP, DEFAULT, Workspaces())
    # the 34 MiB of the gradient step, and one 2 MiB small-pool segment for the kept block,
    # which each repetition frees first and allocates again at its end
    assert (replay.peak_reserved, replay.repeats) == (36 * MIB, 2)
    # so a repetition requests what the recorded step did: a gradient and the temporary
    assert replay.peak_requested == 20 * MIB


def test_a_survivor_that_replaces_nothing_is_freed_as_a_repetition_begins(monkeypatch):
    # what a runner keeps from one step to the next: seen allocated, its free not in the stream
    unit = device_total.repeated_steps(KEPT_STEP)
    assert [unit.steps[i][1] for i in unit.survivors] == ["g1", "kept"]
    assert (unit.pre_freed, unit.kept) == ({3: 0}, [1])  # g1 replaces g0; kept nothing
    check_kept_block_freed_first()
    # mutant: kept blocks stay live in a repetition (one more each time, the requested peak too)
    monkeypatch.setattr(device_total._Steps, "kept", property(lambda unit: []))
    with pytest.raises(AssertionError):
        check_kept_block_freed_first()
