"""Class-N-Diff's joint DiT + latent-classifier training and its guided sampling
(dermbench.methods.classndiff.dit), on a tiny DiT over 4 x 4 latents (CPU, no download)."""

from __future__ import annotations

import copy

import pytest
import torch
from rich.console import Console

from dermbench.methods.classndiff.dit import (
    LatentClassifier,
    StepDraws,
    diffusion_loss,
    dit_scheduler,
    draw_step,
    joint_step,
    make_dit,
    null_id,
    sample_latents,
    train_joint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = Console(quiet=True)
CPU = torch.device("cpu")
LATENT = (4, 4, 4)


def parts(seed: int = 0, num_conditions: int = 2):
    dit = make_dit(
        size="tiny", patch=2, latent_size=4, latent_channels=4, num_conditions=num_conditions, seed=seed
    )
    torch.manual_seed(seed)
    classifier = LatentClassifier(backbone="test_resnet", num_classes=2)
    return dit, classifier, dit_scheduler()


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    z0 = torch.randn((n, *LATENT), generator=g) + labels.view(-1, 1, 1, 1).float() * 2 - 1
    return z0, labels


def fixed_draws(n: int, coupled: bool, seed: int = 1) -> StepDraws:
    g = torch.Generator().manual_seed(seed)
    return StepDraws(
        index=torch.arange(n),
        t=torch.randint(1000, (n,), generator=g),
        noise=torch.randn((n, *LATENT), generator=g),
        dropped=torch.zeros(n, dtype=torch.bool),
        coupled=coupled,
    )


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in module.named_parameters()
    }


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def reference_grads(dit, scheduler, z0, labels, draws):
    """The DiT's gradient of L_D alone for the same draws."""
    ref = copy.deepcopy(dit)
    ref.train()
    ref.zero_grad(set_to_none=True)
    loss, _, _ = diffusion_loss(ref, scheduler, z0, labels, draws.t, draws.noise)
    loss.backward()
    return grads(ref)


def run_step(coupled: bool, *, weight: float = 0.2):
    dit, classifier, scheduler = parts()
    z0, labels = batch()
    draws = fixed_draws(len(z0), coupled)
    expected = reference_grads(dit, scheduler, z0, labels, draws)
    before_cls = params(classifier)
    before_bn = {k: v.clone() for k, v in classifier.state_dict().items() if "running" in k}
    dit_opt = torch.optim.SGD(dit.parameters(), lr=0.0)  # the gradient stays to be inspected
    cls_opt = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9)
    out = joint_step(
        dit,
        classifier,
        scheduler,
        z0=z0,
        cond=labels,
        labels=labels,
        draws=draws,
        weight=weight,
        dit_optimizer=dit_opt,
        classifier_optimizer=cls_opt,
        clip=None,
    )
    return out, grads(dit), expected, before_cls, params(classifier), before_bn, classifier


def test_on_a_coupled_step_the_classifier_loss_reaches_the_dit_and_the_classifier_does_not_step():
    out, got, expected, before, after, before_bn, classifier = run_step(True)
    assert out["coupled"] and "coupled_classifier_loss" in out and "classifier_loss" not in out
    differing = [k for k in got if not torch.allclose(got[k], expected[k], atol=1e-7)]
    assert differing, "the classifier term did not change the DiT's gradient"
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "the classifier optimiser stepped on a coupled step"
    )
    assert all(p.grad is None for p in classifier.parameters()), "the classifier received a gradient"
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in before_bn.items()), (
        "BatchNorm statistics moved"
    )
    assert all(p.requires_grad for p in classifier.parameters())


def test_on_an_uncoupled_step_the_dit_sees_only_the_diffusion_loss_and_the_classifier_trains():
    out, got, expected, before, after, _, _ = run_step(False)
    assert not out["coupled"] and "classifier_loss" in out and "coupled_classifier_loss" not in out
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-6, rtol=1e-5), k
    assert any(not torch.equal(before[k], after[k]) for k in before), (
        "the classifier did not train on clean latents"
    )


def test_the_coupled_gradient_is_the_diffusion_gradient_plus_weight_times_the_classifier_term():
    _, g1, expected, *_ = run_step(True, weight=0.2)
    _, g2, _, *_ = run_step(True, weight=0.4)
    # linear in the weight: g(w) = g_D + w * g_C, so g(0.4) - g(0.2) = g(0.2) - g_D
    for k in g1:
        assert torch.allclose(g2[k] - g1[k], g1[k] - expected[k], atol=1e-5, rtol=1e-3), k


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_the_coupling_happens_on_the_chosen_fraction_of_steps(p):
    g = torch.Generator().manual_seed(3)
    n = 2000
    coupled = sum(
        draw_step(
            g, n_rows=10, batch_size=2, latent_shape=LATENT, timesteps=1000, p=p, cond_dropout=0.1
        ).coupled
        for _ in range(n)
    )
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(coupled - n * p) <= 4 * sd + 1e-9


def test_joint_training_couples_on_the_drawn_steps_and_is_deterministic():
    settings = {
        "steps": 12,
        "batch_size": 4,
        "p": 0.25,
        "weight": 0.2,
        "cond_dropout": 0.1,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "classifier_lr": 1e-2,
        "classifier_momentum": 0.9,
    }
    z0, labels = batch(10)
    latents = torch.cat([z0, torch.full_like(z0, -20.0)], dim=1)  # mean, log-variance ~ no spread

    def run():
        dit, classifier, scheduler = parts()
        history = train_joint(
            dit,
            classifier,
            scheduler,
            latents=latents,
            scaling=1.0,
            cond=labels,
            labels=labels,
            settings=settings,
            seed=5,
            device=CPU,
            console=QUIET,
        )
        return history, params(dit)

    h1, p1 = run()
    h2, p2 = run()
    assert [h["coupled"] for h in h1] == [h["coupled"] for h in h2]
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert all(("coupled_classifier_loss" in h) == h["coupled"] for h in h1)
    assert all(("classifier_loss" in h) != h["coupled"] for h in h1)


def test_the_null_condition_is_an_extra_embedding_row_and_internal_dropout_is_off():
    dit, _, _ = parts(num_conditions=6)
    assert null_id(dit) == 6
    dit.train()
    z = torch.randn(4, *LATENT)
    t = torch.full((4,), 500)
    a = dit(z, timestep=t, class_labels=torch.tensor([0, 1, 2, 6])).sample
    b = dit(z, timestep=t, class_labels=torch.tensor([0, 1, 2, 6])).sample
    assert torch.equal(a, b)  # no random label dropout inside the forward pass


def test_sampling_depends_on_the_seed_not_the_batch():
    dit, _, scheduler = parts()
    cond = torch.tensor([0, 1, 1])
    a = sample_latents(dit, scheduler, cond, cond, [7, 8, 9], sampler="ddim", steps=3, device=CPU)
    b = sample_latents(dit, scheduler, cond[1:], cond[1:], [8, 9], sampler="ddim", steps=3, device=CPU)
    assert torch.allclose(a[1:], b, atol=1e-5)
    c = sample_latents(
        dit, scheduler, cond, cond, [7, 8, 9], sampler="ddpm", steps=3, cfg_scale=2.0, device=CPU
    )
    assert c.shape == a.shape and torch.isfinite(c).all()


def test_classifier_guidance_moves_samples_toward_the_requested_class():
    """A toy problem: class 0 latents around -1.5, class 1 around +1.5. After a short joint
    training, samples drawn with the integrated classifier's guidance are scored by that same
    classifier: the log-probability of the requested class rises with the guidance scale."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    z0 = torch.randn((64, *LATENT), generator=g) * 0.5 + (labels.float() * 3 - 1.5).view(-1, 1, 1, 1)
    latents = torch.cat([z0, torch.full_like(z0, -20.0)], dim=1)
    dit, classifier, scheduler = parts()
    settings = {
        "steps": 150,
        "batch_size": 16,
        "p": 0.25,
        "weight": 0.2,
        "cond_dropout": 0.1,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "classifier_lr": 0.05,
        "classifier_momentum": 0.9,
    }
    train_joint(
        dit,
        classifier,
        scheduler,
        latents=latents,
        scaling=1.0,
        cond=labels,
        labels=labels,
        settings=settings,
        seed=1,
        device=CPU,
        console=QUIET,
    )
    with torch.no_grad():
        assert (classifier.log_probs(z0).argmax(1) == labels).float().mean() >= 0.9
    requested = torch.tensor([0] * 8 + [1] * 8)
    scores, hits = [], []
    for scale in (0.0, 0.3, 1.0):
        z = sample_latents(
            dit,
            scheduler,
            requested,
            requested,
            list(range(16)),
            sampler="ddim",
            steps=10,
            classifier=classifier,
            classifier_scale=scale,
            device=CPU,
        )
        with torch.no_grad():
            log_p = classifier.log_probs(z)
        scores.append(float(log_p.gather(1, requested.view(-1, 1)).mean()))
        hits.append(float((log_p.argmax(1) == requested).float().mean()))
    assert scores[0] < scores[1] < scores[2], scores
    assert hits[2] >= hits[0] and hits[2] >= 0.9, hits


def test_classifier_free_guidance_is_a_switch():
    dit, classifier, scheduler = parts()
    cond = torch.tensor([0, 1])
    plain = sample_latents(dit, scheduler, cond, cond, [1, 2], sampler="ddim", steps=3, device=CPU)
    one = sample_latents(
        dit, scheduler, cond, cond, [1, 2], sampler="ddim", steps=3, cfg_scale=1.0, device=CPU
    )
    strong = sample_latents(
        dit, scheduler, cond, cond, [1, 2], sampler="ddim", steps=3, cfg_scale=4.0, device=CPU
    )
    assert torch.equal(plain, one)
    assert not torch.allclose(plain, strong)
    unguided = sample_latents(
        dit,
        scheduler,
        cond,
        cond,
        [1, 2],
        sampler="ddim",
        steps=3,
        classifier=classifier,
        classifier_scale=0.0,
        device=CPU,
    )
    assert torch.equal(plain, unguided)  # a classifier at scale 0 changes nothing
