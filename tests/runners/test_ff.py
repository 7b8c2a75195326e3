"""DTG-FF details that the paper requires (docs/runners.md, "DTG-FF")."""

import math

import pytest
import torch

from membench.runners.ff import (
    DTGFF,
    INFERENCE_MODES,
    FFNaiveRunner,
    FFPipelinedRunner,
    GoodnessReadout,
)
from membench.schema import Cell

ARCH, RES, BATCH, K = "vgg-d3-w8", 8, 4, 5


def cell(runner_cls) -> Cell:
    return Cell(runner_cls.name, ARCH, RES, BATCH, classes=K)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, RES, RES, generator=g), torch.randint(0, K, (BATCH,), generator=g)


def test_readout_is_fixed_and_temperature_starts_mid_range():
    readout = GoodnessReadout(channels=8, classes=K)
    assert [n for n, _ in readout.named_parameters()] == ["alpha"]
    assert {n for n, _ in readout.named_buffers()} == {"projection", "bias"}
    assert readout.projection.shape == (4 * 8, K)
    assert readout.temperature().item() == pytest.approx(0.5 + 1.5 * 0.5)


def layer_gradient_norms(runner) -> list[float]:
    return [
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
        for params in runner.layer_params
    ]


@pytest.mark.parametrize("runner_cls", [FFNaiveRunner, FFPipelinedRunner])
def test_one_optimizer_per_layer_plus_classifier_and_clipped_gradients(runner_cls):
    runner = runner_cls(cell(runner_cls), total_steps=5)
    assert len(runner.optimizers()) == 3 + 1
    runner.step(*batch())
    # clip_grad_norm_(1.0) before each layer's step: every layer's norm is brought down to 1.
    assert all(norm <= 1.0 + 1e-4 for norm in layer_gradient_norms(runner))
    # The check bites: on this batch every layer's gradient is larger than 1 before clipping,
    # so a runner that did not clip (the mutation: clip_norm lifted) fails it.
    unclipped = runner_cls(cell(runner_cls), total_steps=5)
    unclipped.clip_norm = math.inf
    unclipped.step(*batch())
    assert all(norm > 1.0 + 1e-2 for norm in layer_gradient_norms(unclipped))
    assert layer_gradient_norms(runner) == pytest.approx([1.0] * 3, abs=1e-4)


@pytest.mark.parametrize("runner_cls", [FFNaiveRunner, FFPipelinedRunner])
def test_no_gradient_crosses_a_layer_or_reaches_the_backbone_from_the_classifier(runner_cls):
    """Layer l's gradient must equal the gradient of layer l's own loss alone."""
    runner = runner_cls(cell(runner_cls), total_steps=5, dropout=False)
    reference = runner_cls(cell(runner_cls), total_steps=5, dropout=False)
    images, labels = batch()
    runner.step(images, labels)

    # Recompute layer 1's loss alone from the same initial weights (before any step).
    model = reference.model
    first, second = model.backbone.layers()[:2]
    with torch.no_grad():
        x = model.propagate(0, first.block(images))
    z = second.block(x)
    loss = torch.nn.functional.cross_entropy(model.readouts[1](z), labels)
    grads = torch.autograd.grad(loss, reference.layer_params[1])
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    expected = [
        g * min(1.0, 1.0 / (total.item() + 1e-6)) for g in grads
    ]  # clipping as the runner does
    for got, want in zip([p.grad for p in runner.layer_params[1]], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def check_classifier_features(model: DTGFF, images: torch.Tensor) -> None:
    """The classifier's features are GAP(z_l) of every layer but the first, in layer order."""
    outputs, x = [], images
    for layer in model.backbone.layers():
        outputs.append(layer.block(x))
        x = layer.next_input(outputs[-1])
    expected = torch.cat([z.mean(dim=(2, 3)) for z in outputs[1:]], dim=1)
    features = model.classifier_features(images)
    assert features.shape == expected.shape and not features.requires_grad
    torch.testing.assert_close(features, expected)


def test_classifier_features_skip_the_first_layer(monkeypatch):
    # VGG11's widths differ layer to layer (64, 128, 256, ...): 2688 features without layer 0,
    # 2752 with it, so a feature from the wrong layers cannot pass for the right ones.
    model = FFPipelinedRunner(
        Cell("ff-pipelined", "vgg11", 32, BATCH, classes=K), dropout=False
    ).model
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert model.classifier[-1].in_features == 2688
    with torch.no_grad():
        check_classifier_features(model, images)
        # The mutation: layer 0's feature included.
        original = DTGFF.classifier_features
        monkeypatch.setattr(
            DTGFF,
            "classifier_features",
            lambda self, x: torch.cat(
                [self.backbone.layer(0).block(x).mean(dim=(2, 3)), original(self, x)], dim=1
            ),
        )
        with pytest.raises(AssertionError):
            check_classifier_features(model, images)


def test_both_inference_paths_give_logits():
    runner = FFPipelinedRunner(cell(FFPipelinedRunner))
    runner.model.eval()
    images, _ = batch()
    with torch.no_grad():
        assert runner.model.infer_logits(images, "concat").shape == (BATCH, K)
        assert runner.model.infer_logits(images, "logit-sum").shape == (BATCH, K)
    with pytest.raises(ValueError, match="concat, logit-sum"):
        runner.model.infer_logits(images, "logit_sum")


# A learnable task: one fixed random template per class plus noise (as membench.verify's
# learnable_batch), with fresh labels and noise per seed, so another seed gives held-out samples.
LEARN_ARCH, LEARN_K, LEARN_BATCH, LEARN_STEPS = "vgg-d3-w32", 4, 16, 200
ACCURACY_FLOOR = 0.8  # chance is 1/4; seeds 0-9: trained 0.99-1.0, untrained <= 0.45


def template_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.randn(LEARN_K, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, LEARN_K, (n,), generator=g)
    return 2.0 * templates[labels] + 0.5 * torch.randn(n, 3, RES, RES, generator=g), labels


def accuracy(runner, how: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    runner.model.eval()
    try:
        return (
            (runner.model.infer_logits(images, how).argmax(dim=1) == labels).float().mean().item()
        )
    finally:
        runner.model.train()


def test_both_inference_paths_classify_held_out_samples_only_after_training():
    images, labels = template_task(256, seed=10_000)
    # The recipe's lr, with the cosine stretched so it stays near 2e-4 (as `membench verify` does).
    runner = FFPipelinedRunner(
        Cell("ff-pipelined", LEARN_ARCH, RES, 256, classes=LEARN_K), total_steps=100 * LEARN_STEPS
    )
    untrained = {how: accuracy(runner, how, images, labels) for how in INFERENCE_MODES}
    for step in range(LEARN_STEPS):
        runner.step(*template_task(LEARN_BATCH, seed=step))
    trained = {how: accuracy(runner, how, images, labels) for how in INFERENCE_MODES}

    # The floor is what training buys: this runner untrained scores 0.26 (concat) and 0.45
    # (logit-sum: a random readout can be lucky on templates), trained 1.0 on both. Scrambling
    # the concat features' order or alignment, or summing one layer's readout L times, fails it.
    assert all(acc < ACCURACY_FLOOR for acc in untrained.values()), untrained
    assert all(acc >= ACCURACY_FLOOR for acc in trained.values()), trained


def test_micro_batched_ff_holds_one_chunks_graph_and_keeps_the_cell_id_without_it():
    from membench.config import expand_grid
    from membench.planning.estimate import estimate_cell
    from membench.schema import Cell

    whole, split = (
        estimate_cell(
            Cell("ff-pipelined", "vgg-d4-w64", 32, 64, mb, warmup=1, steps=1), "cuda"
        ).peak_allocated_bytes
        for mb in (None, 16)
    )
    assert split < whole
    [plain] = expand_grid(method=["ff-pipelined"], arch=["vgg8"], res=[32], batch=[256])
    assert plain.micro_batch is None and "mb" not in plain.cell_id  # ids of earlier runs hold
    [chunked] = expand_grid(method="ff-pipelined", arch="vgg8", res=32, batch=256, micro_batch=64)
    assert chunked.cell_id == "ff-pipelined_vgg8_r32_b256_mb64_k10"
