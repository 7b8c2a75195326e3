"""DTG-FF details that the paper (and SPEC section 1) require."""

import pytest
import torch

from membench.runners.ff import FFNaiveRunner, FFPipelinedRunner, GoodnessReadout

ARCH, RES, BATCH, K = "vgg-d3-w8", 8, 4, 5


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, RES, RES, generator=g), torch.randint(0, K, (BATCH,), generator=g)


def test_readout_is_fixed_and_temperature_starts_mid_range():
    readout = GoodnessReadout(channels=8, classes=K)
    assert [n for n, _ in readout.named_parameters()] == ["alpha"]
    assert {n for n, _ in readout.named_buffers()} == {"projection", "bias"}
    assert readout.projection.shape == (4 * 8, K)
    assert readout.temperature().item() == pytest.approx(0.5 + 1.5 * 0.5)


@pytest.mark.parametrize("runner_cls", [FFNaiveRunner, FFPipelinedRunner])
def test_one_optimizer_per_layer_plus_classifier_and_clipped_gradients(runner_cls):
    runner = runner_cls(ARCH, RES, K, seed=0, total_steps=5)
    assert len(runner.optimizers()) == 3 + 1
    images, labels = batch()
    runner.step(images, labels)
    for params in runner.layer_params:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        assert norm <= 1.0 + 1e-4  # clip_grad_norm_(1.0) applied before each layer's step


@pytest.mark.parametrize("runner_cls", [FFNaiveRunner, FFPipelinedRunner])
def test_no_gradient_crosses_a_layer_or_reaches_the_backbone_from_the_classifier(runner_cls):
    """Layer l's gradient must equal the gradient of layer l's own loss alone."""
    runner = runner_cls(ARCH, RES, K, seed=0, total_steps=5, dropout=False)
    reference = runner_cls(ARCH, RES, K, seed=0, total_steps=5, dropout=False)
    images, labels = batch()
    runner.step(images, labels)

    # Recompute layer 1's loss alone from the same initial weights (before any step).
    model = reference.model
    with torch.no_grad():
        x = model.propagate(0, model.backbone.blocks[0](images))
    z = model.backbone.blocks[1](x)
    loss = torch.nn.functional.cross_entropy(model.readouts[1](z), labels)
    grads = torch.autograd.grad(loss, reference.layer_params[1])
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    expected = [g * min(1.0, 1.0 / (total.item() + 1e-6)) for g in grads]  # clipping as the runner does
    for got, want in zip([p.grad for p in runner.layer_params[1]], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_classifier_features_skip_the_first_layer():
    runner = FFPipelinedRunner("vgg-d3-w8", RES, K, seed=0)
    features = runner.model.classifier_features(batch()[0])
    assert features.shape == (BATCH, 8 + 8)  # layers 1 and 2 only
    assert not features.requires_grad


def test_both_inference_paths_give_logits():
    runner = FFPipelinedRunner(ARCH, RES, K, seed=0)
    runner.model.eval()
    images, _ = batch()
    with torch.no_grad():
        assert runner.model.infer_logits(images, "concat").shape == (BATCH, K)
        assert runner.model.infer_logits(images, "logit-sum").shape == (BATCH, K)
