"""`membench verify`: the checks pass for the built-in runners and catch broken ones,
third-party runners registered through the entry-point group included."""

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from helpers import usage_error
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
        uses_micro_batch = True
        same_gradients_as = "bp"

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
        same_gradients_as = "bp"
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
    results = by_check(verify(runners.available_methods()[:6], SMALL))
    assert results["bp-accum", "gradients"].passed
    assert results["bp-ckpt", "gradients"].passed
    assert results["ff-pipelined", "first-step losses"].passed
    for method in ("bp", "bp-accum", "bp-ckpt", "bp-deepsup", "ff-naive", "ff-pipelined"):
        assert results[method, "learns"].passed, results[method, "learns"].detail


def test_broken_third_party_runners_fail_and_a_good_one_passes(third_party):
    assert "good-plugin" in runners.available_methods()
    results = by_check(verify(["forgot-to-scale", "never-learns", "good-plugin"], SMALL))
    assert not results["forgot-to-scale", "gradients"].passed
    assert not results["never-learns", "learns"].passed
    assert results["good-plugin", "gradients"].passed
    assert results["good-plugin", "learns"].passed


def test_cli_exit_codes(third_party):
    cli = CliRunner()
    failing = cli.invoke(app, ["verify", "--method", "never-learns", "--arch", "vgg-d3-w8", "--res", "8"])
    assert failing.exit_code == 1
    assert "FAIL" in failing.output
    assert "unknown method" in usage_error(cli.invoke(app, ["verify", "--method", "nope"]))
