"""``membench verify`` for runners that span devices: on 2 gloo ranks each leaves its
single-device reference's gradients, and each check fails on a runner with a small defect."""

from __future__ import annotations

import pytest
from fake_runners import install_fake_runners

from membench.verify import VerifySetup, verify
from membench.verify.across_devices import check_rank_gradients, check_rank_learns

MUTANTS = '''
from membench.multidevice.bp_runners import BPDDPRunner, BPFSDPRunner, BPPipelineRunner
from membench.multidevice.ff_runner import FFPipelineRunner


def _first_share(runner, images, labels):
    """Every rank trains on rank 0's share of the batch (the rest of it is never seen)."""
    return images.chunk(runner.devices)[0].clone(), labels.chunk(runner.devices)[0].clone()


class OneShareDDP(BPDDPRunner):
    name = "mutant-ddp"
    local_batch = _first_share


class OneShareFSDP(BPFSDPRunner):
    name = "mutant-fsdp"
    local_batch = _first_share


class DoubledLossPipeline(BPPipelineRunner):
    name = "mutant-pp"

    def _loss(self, logits, labels):
        return 2 * super()._loss(logits, labels)


class FrozenDDP(BPDDPRunner):
    """Computes the right gradients and never applies them."""

    name = "mutant-frozen-ddp"

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.update.step = lambda scaler: None


class WholeShareFF(FFPipelineRunner):
    """Each chunk's loss is not scaled by its share of the batch."""

    name = "mutant-ff-pp"

    @staticmethod
    def loss_share(chunk, batch):
        return 1.0
'''
GRADIENT_MUTANTS = {
    "mutant-ddp": "OneShareDDP",
    "mutant-fsdp": "OneShareFSDP",
    "mutant-pp": "DoubledLossPipeline",
    "mutant-ff-pp": "WholeShareFF",
}
MUTANT_NAMES = {**GRADIENT_MUTANTS, "mutant-frozen-ddp": "FrozenDDP"}


@pytest.mark.slow
def test_each_multi_device_runner_leaves_its_references_gradients_and_mutants_do_not(
    tmp_path, monkeypatch
):
    install_fake_runners(tmp_path, monkeypatch, MUTANTS, MUTANT_NAMES)
    results = verify(["bp-ddp", "bp-fsdp", "bp-pp", "ff-pp"])
    by_method: dict[str, list] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    for method in ("bp-ddp", "bp-fsdp", "bp-pp", "ff-pp"):
        assert by_method[method] and all(r.passed for r in by_method[method]), by_method[method]
        assert by_method[method][-1].check == "learns"
    assert [r.check for r in by_method["bp-pp"]] == [
        "gradients on 2 ranks (gpipe)",
        "gradients on 2 ranks (1f1b)",
        "learns",
    ]
    assert by_method["ff-pp"][0].reference == "ff-pipelined"
    for mutant in GRADIENT_MUTANTS:
        checks = [
            check_rank_gradients(mutant, VerifySetup(), schedule)
            for schedule in (("gpipe", "1f1b") if mutant == "mutant-pp" else (None,))
        ]
        assert not any(r.passed for r in checks), checks
        assert all("max relative difference" in r.detail for r in checks), checks
    assert check_rank_gradients("mutant-frozen-ddp", VerifySetup()).passed
    assert not check_rank_learns("mutant-frozen-ddp", VerifySetup()).passed
