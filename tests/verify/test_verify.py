"""`membench verify`: the checks pass for the built-in runners and catch broken ones,
third-party runners registered through the entry-point group included."""

import contextlib
import sys
import textwrap

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench import runners
from membench.cli import app
from membench.verify import VerifySetup, verify

SMALL = VerifySetup()  # vgg-d3-w32 at 8x8: learns visibly within 50 steps, in about a second

THIRD_PARTY = textwrap.dedent('''
    import torch.nn.functional as F
    from membench.runners.bp import BPRunner

    class ForgotToScale(BPRunner):
        """Gradient accumulation that forgets the 1/n loss scaling: twice bp's gradients."""
        name = "forgot-to-scale"
        contract = BPRunner.contract.but(micro_batch=True, same_gradients_as="bp")

        def step(self, images, labels):
            self.optimizer.zero_grad(set_to_none=True)
            for x, y in zip(images.chunk(2), labels.chunk(2)):
                loss = F.cross_entropy(self.model(x), y)
                loss.backward()
            self.optimizer.step()
            return loss.detach()

    class NeverLearns(BPRunner):
        """Computes a loss but never updates the weights."""
        name = "never-learns"

        def step(self, images, labels):
            return F.cross_entropy(self.model(images), labels).detach()

    class GoodPlugin(BPRunner):
        """A correct third-party runner: plain bp under another name."""
        name = "good-plugin"
        contract = BPRunner.contract.but(same_gradients_as="bp")
''')


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    (tmp_path / "myrunners.py").write_text(THIRD_PARTY)
    dist = tmp_path / "myrunners-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myrunners\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[membench.methods]\n"
        "forgot-to-scale = myrunners:ForgotToScale\n"
        "never-learns = myrunners:NeverLearns\n"
        "good-plugin = myrunners:GoodPlugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    runners._entry_points.cache_clear()
    yield
    sys.modules.pop("myrunners", None)
    runners._entry_points.cache_clear()


def by_check(results):
    return {(r.method, r.check): r for r in results}


def test_builtin_runners_pass_every_check():
    results = by_check(verify(list(runners.BUILTIN_METHODS), SMALL, precisions=()))
    assert all(result.passed for result in results.values()), [
        (key, r.detail) for key, r in results.items() if not r.passed
    ]
    for method in ("bp-accum", "bp-ckpt", "bp-sac", "bp-offload"):
        assert (method, "gradients") in results
    for method in ("bp-ckpt", "bp-sac", "bp-offload"):
        assert (method, "gradients (dropout on)") in results
    assert ("ff-pipelined", "layer gradients") in results
    assert ("ff-pipelined", "layer gradients (micro-batch 4)") in results
    assert ("ff-pipelined", "first-step losses") in results
    for method in runners.BUILTIN_METHODS:
        assert (method, "learns") in results


def test_broken_third_party_runners_fail_and_a_good_one_passes(third_party):
    assert "good-plugin" in runners.available_methods()
    results = by_check(verify(["forgot-to-scale", "never-learns", "good-plugin"], SMALL))
    assert not results["forgot-to-scale", "gradients"].passed
    assert not results["never-learns", "learns"].passed
    assert results["good-plugin", "gradients"].passed
    assert results["good-plugin", "learns"].passed


def test_cli_exit_codes(third_party):
    cli = CliRunner()
    failing = cli.invoke(
        app, ["verify", "--method", "never-learns", "--arch", "vgg-d3-w8", "--res", "8"]
    )
    assert failing.exit_code == 1
    assert "FAIL" in failing.output
    assert "unknown method" in usage_error(cli.invoke(app, ["verify", "--method", "nope"]))


# -- each new check, shown failing on a small mutation ------------------------------------------
def failed_checks(methods) -> set[tuple[str, str]]:
    return {(r.method, r.check) for r in verify(methods, SMALL, precisions=()) if not r.passed}


def test_the_layer_gradient_check_catches_gradients_leaking_across_layers(monkeypatch):
    from membench.runners.ff import DTGFF

    assert failed_checks(["ff-pipelined"]) == set()
    # drop the no_grad/detach between layers: later losses now reach earlier layers
    monkeypatch.setattr(
        DTGFF, "propagate", lambda self, layer, z: self.backbone.layer(layer).next_input(z)
    )
    failed = failed_checks(["ff-pipelined"])
    assert ("ff-pipelined", "layer gradients") in failed or ("ff-pipelined", "crash") in failed


def test_the_micro_batch_check_catches_a_missing_loss_scale(monkeypatch):
    from membench.runners.ff import FFPipelinedRunner

    monkeypatch.setattr(FFPipelinedRunner, "loss_share", staticmethod(lambda chunk, batch: 1.0))
    failed = failed_checks(["ff-pipelined"])
    assert ("ff-pipelined", "layer gradients (micro-batch 4)") in failed
    assert ("ff-pipelined", "layer gradients") not in failed  # no split, no scale: still right


def test_the_dropout_check_catches_a_checkpoint_that_forgets_the_rng_state(monkeypatch):
    from membench.runners import saved_tensors

    original = saved_tensors.checkpoint
    monkeypatch.setattr(
        saved_tensors, "checkpoint", lambda *a, **k: original(*a, preserve_rng_state=False, **k)
    )
    failed = failed_checks(["bp-ckpt"])
    assert failed == {("bp-ckpt", "gradients (dropout on)")}  # dropout off it still matches


def test_the_offload_check_catches_a_saved_tensor_that_comes_back_wrong(monkeypatch):
    from membench.runners.saved_tensors import OffloadSavedTensors

    monkeypatch.setattr(
        OffloadSavedTensors,
        "_unpack",
        lambda self, packed: packed * 1.01 if packed.is_floating_point() else packed.clone(),
    )
    assert ("bp-offload", "gradients") in failed_checks(["bp-offload"])


def test_reduced_precisions_stay_close_to_fp32_learn_and_must_really_run(monkeypatch):
    from membench.runners.base import Runner

    results = by_check(verify(["bp", "ff-pipelined"], SMALL))
    for method in ("bp", "ff-pipelined"):
        for precision in ("bf16", "fp16"):
            assert results[method, f"first-step loss ({precision})"].passed
            assert results[method, f"learns ({precision})"].passed
    # autocast that does nothing leaves the loss bit-identical to fp32's: the check fails
    monkeypatch.setattr(Runner, "autocast", lambda self: contextlib.nullcontext())
    failed = failed_checks_for(["bp"], precisions=("bf16",))
    assert ("bp", "first-step loss (bf16)") in failed


def test_the_compiled_check_catches_a_compiled_region_that_computes_something_else(monkeypatch):
    from membench.runners.base import Runner
    from membench.verify.checks import check_compiled

    # stands in for torch.compile (which takes tens of seconds on a CPU): the same function...
    monkeypatch.setattr(
        Runner,
        "compiled",
        lambda self, fn: fn if self.cell.compile == "none" else (lambda *args: fn(*args)),
    )
    assert check_compiled("bp", SMALL).passed
    # ...and one whose compiled region returns slightly different logits
    monkeypatch.setattr(
        Runner,
        "compiled",
        lambda self, fn: fn if self.cell.compile == "none" else (lambda *args: fn(*args) * 1.01),
    )
    assert not check_compiled("bp", SMALL).passed


@pytest.mark.slow
def test_compiled_bp_matches_eager():
    from membench.verify.checks import check_compiled

    result = check_compiled("bp", VerifySetup(arch="vgg-d2-w8", res=8, batch=4))
    assert result.passed, result.detail


def failed_checks_for(methods, **options) -> set[tuple[str, str]]:
    return {(r.method, r.check) for r in verify(methods, SMALL, **options) if not r.passed}
