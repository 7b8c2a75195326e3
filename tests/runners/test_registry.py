import pytest
from fake_runners import install_fake_runners

from membench.runners import (
    BUILTIN_METHODS,
    RunnerContract,
    UnknownMethodError,
    available_methods,
    get_runner,
)


def test_builtins_come_first_in_the_spec_order():
    assert tuple(available_methods()[: len(BUILTIN_METHODS)]) == BUILTIN_METHODS
    for name in BUILTIN_METHODS:
        assert get_runner(name).name == name


def test_every_builtin_declares_its_family_and_what_it_takes_in_its_contract():
    families = {name: get_runner(name).contract.family_of(name) for name in BUILTIN_METHODS}
    assert {n for n, f in families.items() if f == "ff"} == {"ff-naive", "ff-pipelined", "ff-pp"}
    assert all(f == "bp" for n, f in families.items() if n.startswith("bp"))
    takes_micro_batch = {n for n in BUILTIN_METHODS if get_runner(n).contract.micro_batch}
    assert takes_micro_batch == {
        "bp-accum",
        "bp-ckpt",
        "bp-sac",
        "bp-offload",
        "ff-pipelined",
        "bp-pp",
        "ff-pp",
    }
    spans = {n for n in BUILTIN_METHODS if get_runner(n).contract.spans_devices}
    assert spans == {"bp-ddp", "bp-fsdp", "bp-pp", "ff-pp"}
    # A subclass states only what it changes; the rest is its parent's.
    assert get_runner("bp-accum").contract == get_runner("bp").contract.but(
        micro_batch=True, same_gradients_as="bp"
    )
    assert RunnerContract().family_of("my-method") == "my-method"


RETIRED = """
from membench.runners.bp import BPRunner

class OldStyle(BPRunner):
    name = "old-style"
    uses_micro_batch = True
"""


def test_a_runner_declaring_a_retired_attribute_is_refused_by_name(tmp_path, monkeypatch):
    install_fake_runners(tmp_path, monkeypatch, RETIRED, {"old-style": "OldStyle"})
    with pytest.raises(UnknownMethodError, match="uses_micro_batch.*RunnerContract\\(micro_batch"):
        get_runner("old-style")
    # The check can fail: the same runner declaring its contract loads.
    fixed = RETIRED.replace(
        "uses_micro_batch = True", "contract = BPRunner.contract.but(micro_batch=True)"
    ).replace('"old-style"', '"new-style"')
    install_fake_runners(tmp_path, monkeypatch, fixed, {"new-style": "OldStyle"})
    assert get_runner("new-style").contract.micro_batch
