"""The multi-scale flow (invertibility, exact log-determinant, sampling) and the NFlowJS recipe."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp, softmax

from oodseg.errors import OodsegError
from oodseg.models import build_model
from oodseg.models.flow import ActNorm, Flow, random_crops, squeeze, unsqueeze
from oodseg.training.nflowjs import NFlowJSRecipe, patch_boxes
from oodseg.training.losses import js_to_uniform
from oodseg.training import make_config


def _perturbed_flow(dtype=torch.float32, **kwargs) -> Flow:
    """A flow whose actnorm is initialised and whose parameters are all away from their identity init."""
    flow = Flow(**kwargs).to(dtype)
    flow.train()
    flow(torch.rand(4, 3, 8 * 2 ** (flow.num_levels - 1), 8 * 2 ** (flow.num_levels - 1), dtype=dtype))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return flow.eval()


def test_squeeze_is_a_permutation_with_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    assert torch.equal(y[0, :4, 0, 0], torch.tensor([0.0, 1.0, 6.0, 7.0]))  # channel 0's top-left 2×2 block
    assert torch.equal(unsqueeze(y), x)


@pytest.mark.parametrize("size", [(16, 16), (24, 40)])
def test_inverse_of_forward_is_identity(size):
    flow = _perturbed_flow(levels=3, steps_per_level=2, hidden=16)
    x = torch.rand(3, 3, *size)
    with torch.no_grad():
        latents, logdet = flow(x)
        restored = flow.inverse(latents)
    assert [tuple(z.shape[1:]) for z in latents] == flow.latent_shapes(*size)
    assert sum(z[0].numel() for z in latents) == x[0].numel()
    assert torch.isfinite(logdet).all()
    assert float((restored - x).abs().max()) < 1e-4


def test_log_determinant_equals_brute_force_jacobian():
    flow = _perturbed_flow(torch.float64, levels=2, steps_per_level=2, hidden=8)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.9 + 0.05

    def latents_of(flat):
        return torch.cat([z.reshape(-1) for z in flow(flat.view(1, 3, 4, 4))[0]])

    jacobian = torch.autograd.functional.jacobian(latents_of, x.reshape(-1))
    sign, brute_force = torch.linalg.slogdet(jacobian)
    with torch.no_grad():
        _, logdet = flow(x)
    assert float(sign) != 0.0
    assert float(logdet[0]) == pytest.approx(float(brute_force), rel=1e-9, abs=1e-8)


def test_log_prob_is_gaussian_log_density_plus_logdet():
    flow = _perturbed_flow(torch.float64, levels=2, steps_per_level=1, hidden=8)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        latents, logdet = flow(x)
    flat = torch.cat([z.reshape(2, -1) for z in latents], 1).numpy()
    gaussian = -0.5 * (flat ** 2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
    np.testing.assert_allclose(flow.log_prob(x).detach().numpy(), gaussian + logdet.detach().numpy(), rtol=1e-12)


def test_actnorm_data_dependent_initialisation(rng):
    layer = ActNorm(4).train()
    x = torch.tensor(rng.normal(3.0, 2.5, size=(8, 4, 5, 5)), dtype=torch.float32)
    y, _ = layer(x)
    values = y.detach().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(values.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(1), 1.0, atol=1e-4)
    y2, _ = layer(x + 1.0)  # initialised once only
    assert float((y2 - y).detach().mean()) > 0.1
    flat = ActNorm(2, min_std=0.1).train()
    flat(torch.full((1, 2, 4, 4), 0.3))  # a constant first batch: the scale stays bounded by 1/min_std
    assert float(flat.log_scale.detach().max()) == pytest.approx(np.log(10.0))


@pytest.mark.parametrize("size", [(8, 8), (16, 32), (40, 24)])
def test_sampling_at_several_sizes(size):
    flow = _perturbed_flow(levels=3, steps_per_level=2, hidden=16)
    with torch.no_grad():
        sample = flow.sample(2, *size, temperature=0.7, generator=torch.Generator().manual_seed(0))
        again = flow.sample(2, *size, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, *size)
    assert torch.isfinite(sample).all() and float(sample.min()) >= 0.0 and float(sample.max()) <= 1.0
    assert torch.equal(sample, again)


def test_bad_sizes_and_shapes_raise_one_line_errors():
    flow = Flow(levels=2, steps_per_level=1, hidden=4)
    with pytest.raises(OodsegError, match="multiple of 2\\*\\*levels = 4") as info:
        flow.sample(1, 10, 8)
    assert "\n" not in str(info.value)
    with pytest.raises(OodsegError, match="expected images"):
        flow(torch.rand(1, 1, 8, 8))
    with pytest.raises(OodsegError, match="multiple"):
        flow(torch.rand(1, 3, 8, 6))
    with pytest.raises(OodsegError, match="latents"):
        flow.inverse([torch.zeros(1, 6, 4, 4)])
    with pytest.raises(OodsegError, match="larger than the images"):
        random_crops(torch.rand(1, 3, 8, 8), 16, 8)


def test_patch_boxes_are_multiples_inside_the_image():
    boxes = patch_boxes(list(range(200)), 96, 128, multiple=8, max_fraction=0.25)
    top, left, h, w = boxes.T
    assert set(h.tolist()) | set(w.tolist()) <= {8, 16, 24}
    assert {8, 24} <= set(h.tolist())
    assert bool((top >= 0).all() and (top + h <= 96).all() and (left >= 0).all() and (left + w <= 128).all())
    assert torch.equal(patch_boxes([5, 7], 96, 128, 8), patch_boxes([5, 7], 96, 128, 8))


def _recipe_and_module(flow_pretrain_steps=0):
    torch.manual_seed(0)
    recipe = NFlowJSRecipe(flow_pretrain_steps=flow_pretrain_steps, flow_levels=2, flow_steps_per_level=1,
                           flow_hidden=8, class_weight_power=0)
    config = make_config("nflowjs", data="unused", out="unused", crop_size=32)
    module = recipe.setup(build_model("small", num_classes=5, widths=(8, 8, 8), aspp_channels=8,
                                      low_channels=4, decoder_channels=8, dropout=0.0), config).train()
    data = {"image": torch.rand(2, 3, 32, 32), "label": torch.randint(0, 5, (2, 32, 32)),
            "seed": torch.tensor([3, 11])}
    return recipe, module, config, data


def test_js_gradient_reaches_the_flow_through_the_pasted_pixels():
    recipe, module, _, data = _recipe_and_module()
    batch = recipe.batch(data, np.random.default_rng(0))
    pasted = batch["label"] == 254
    assert pasted.any() and (~pasted).any()
    # the pasted image depends on the flow only inside the boxes
    captured = {}
    module.model.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    out = module(batch["image"], batch["boxes"], batch["seed"], joint=True)
    image_grad = torch.autograd.grad(captured["x"].sum(), next(module.flow.parameters()), retain_graph=True)
    assert image_grad[0].abs().sum() > 0
    outside = ~pasted[:, None].expand_as(captured["x"])
    assert torch.equal(captured["x"][outside], batch["image"][outside])
    js_term = js_to_uniform(torch.nn.functional.interpolate(out["logits"], size=(32, 32)))[pasted].sum()
    grads = torch.autograd.grad(js_term, list(module.flow.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0, 3.0, 0.25]])
def test_joint_loss_matches_an_independent_formula(class_weights):
    recipe, module, _, data = _recipe_and_module()
    recipe.class_weights = None if class_weights is None else torch.tensor(class_weights)
    batch = recipe.batch(data, np.random.default_rng(0))
    loss, terms = recipe.loss(module, batch)
    with torch.no_grad():
        out = module(batch["image"], batch["boxes"], batch["seed"], joint=True)
    logits = out["logits"].numpy().transpose(0, 2, 3, 1).reshape(-1, 5)
    labels = batch["label"].numpy().reshape(-1)
    inlier, pasted = labels < 5, labels == 254
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    w = np.ones(5) if class_weights is None else np.asarray(class_weights)
    ce = -log_p[inlier, labels[inlier]]
    weighted_mean_ce = (w[labels[inlier]] * ce).sum() / w[labels[inlier]].sum()  # F.cross_entropy(weight=w)
    js_sum = sum(jensenshannon(np.full(5, 0.2), p) ** 2 for p in softmax(logits[pasted], axis=1))
    expected = (weighted_mean_ce * inlier.sum() + 3e-2 * js_sum + out["nll"].sum().item()) / (inlier.sum() + pasted.sum())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert terms["ce"] == pytest.approx(weighted_mean_ce, rel=1e-4)
    dims = (batch["boxes"][:, 2] * batch["boxes"][:, 3] * 3).numpy()
    assert terms["nll_bpd"] == pytest.approx(float(np.mean(out["nll"].numpy() / (dims * math.log(2)))), rel=1e-5)


def test_flow_pretraining_steps_train_only_the_flow():
    recipe, module, config, data = _recipe_and_module(flow_pretrain_steps=1)
    groups = recipe.param_groups(module, config)
    assert [g["lr"] for g in groups] == [config.lr, recipe.flow_lr]
    batch = recipe.batch(data, np.random.default_rng(0))
    assert not batch["joint"] and torch.equal(batch["label"], data["label"])
    assert not module.flow.initialized
    loss, terms = recipe.loss(module, batch)
    assert module.flow.initialized  # actnorm initialised on crops of the whole batch
    loss.backward()
    assert all(p.grad is None for p in module.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.flow.parameters())
    assert terms["flow_pretrain"] == 1.0
    assert recipe.batch(data, np.random.default_rng(1))["joint"]
    state = recipe.state_dict()
    fresh = NFlowJSRecipe(flow_pretrain_steps=1)
    fresh.load_state_dict(state)
    assert fresh.steps_done == 2


def test_recipe_rejects_bad_options():
    with pytest.raises(OodsegError, match="unknown parameter"):
        NFlowJSRecipe(lamda=0.1)
    with pytest.raises(OodsegError, match="nflowjs"):
        NFlowJSRecipe(patch_max_fraction=2.0)
