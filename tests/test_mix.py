"""Mixup / CutMix on device against timm's `Mixup` (mode 'batch', as DeiT trains): the same
images and soft targets for the same lambda and box, the draws' distributions, and the
config checks of the mixing and EMA keys."""


import jax
import jax.numpy as jnp
import numpy as np
import torch
from scipy import stats

from vit_jax import config as config_lib
from vit_jax.train import mix

NUM_CLASSES, SMOOTHING = 5, 0.1
HEIGHT, WIDTH = 12, 10  # not square: rows and columns must not be swapped


def batch(seed=0, n=8):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, HEIGHT, WIDTH, 3).astype(np.float32),
            rng.randint(0, NUM_CLASSES, n).astype(np.int64))


def timm_mix(timm, images, labels, lam, use_cutmix, seed=0):
    """timm's `Mixup` with its per-batch draw fixed to (`lam`, `use_cutmix`); the CutMix box
    centre comes from numpy's global RNG, seeded with `seed`."""
    from timm.data.mixup import Mixup
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
                  label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)
    mixer._params_per_batch = lambda: (lam, use_cutmix)
    np.random.seed(seed)
    x, target = mixer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                      torch.from_numpy(labels))
    return x.numpy().transpose(0, 2, 3, 1), target.numpy()


def ours(images, labels, params):
    return (np.asarray(mix.mix_images(params, jnp.asarray(images))),
            np.asarray(mix.mix_targets(params.lam, jnp.asarray(labels), NUM_CLASSES, SMOOTHING)))


LAMS = [float(np.float32(x)) for x in (0.0, 0.07, 0.3, 0.5, 0.61, 0.93, 1.0)]


def test_mixup_gives_timms_images_and_targets(timm):
    images, labels = batch()
    worst = 0.0
    for lam in LAMS:
        want_x, want_t = timm_mix(timm, images.copy(), labels, lam, use_cutmix=False)
        params = mix.MixParams(lam=jnp.float32(lam), use_cutmix=jnp.asarray(False),
                               box=(0, 0, 0, 0))
        got_x, got_t = ours(images, labels, params)
        worst = max(worst, np.abs(got_x - want_x).max(), np.abs(got_t - want_t).max())
        np.testing.assert_allclose(got_x, want_x, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got_t, want_t, atol=1e-7, rtol=0)
    print(f'mixup vs timm: max abs diff {worst:.2e}')


def test_cutmix_gives_timms_box_lambda_images_and_targets(timm):
    from timm.data.mixup import cutmix_bbox_and_lam, rand_bbox
    images, labels = batch(1)
    clipped, worst = 0, 0.0
    for lam in LAMS:
        for seed in range(6):
            # timm's box: centre rows then columns from numpy's RNG; ours from the same centre.
            np.random.seed(seed)
            centre_y, centre_x = np.random.randint(0, HEIGHT), np.random.randint(0, WIDTH)
            box = mix.cutmix_box(jnp.float32(lam), centre_y, centre_x, HEIGHT, WIDTH)
            np.random.seed(seed)
            assert tuple(map(int, box)) == tuple(map(int, rand_bbox((HEIGHT, WIDTH), lam)))
            np.random.seed(seed)
            _, want_lam = cutmix_bbox_and_lam((3, HEIGHT, WIDTH), lam)
            got_lam = mix.box_lam(box, HEIGHT, WIDTH)
            assert float(got_lam) == np.float32(want_lam), (lam, seed)
            top, bottom, left, right = map(int, box)
            unclipped = [int(n * np.sqrt(1 - lam)) for n in (HEIGHT, WIDTH)]
            clipped += (bottom - top) * (right - left) != unclipped[0] * unclipped[1]
            want_x, want_t = timm_mix(timm, images.copy(), labels, lam, True, seed=seed)
            got_x, got_t = ours(images, labels, mix.MixParams(
                lam=got_lam, use_cutmix=jnp.asarray(True), box=box))
            np.testing.assert_array_equal(got_x, want_x)
            # timm weighs the reversed labels by 1 - lam rounded from float64: <= 1 ulp apart.
            worst = max(worst, np.abs(got_t - want_t).max())
            np.testing.assert_allclose(got_t, want_t, atol=6e-8, rtol=0)
    print(f'cutmix targets vs timm: max abs diff {worst:.2e} (images identical)')
    assert clipped >= 5  # boxes cut by the border, whose lambda timm corrects (correct_lam)


@jax.jit
def draws(keys, prob, switch_prob):
    """`mix.sample` (16 x 16 images, DeiT's alphas) for each key: (lam, use_cutmix)."""
    params = jax.vmap(lambda key: mix.sample(key, 16, 16, mixup_alpha=0.8, cutmix_alpha=1.0,
                                             prob=prob, switch_prob=switch_prob))(keys)
    return params.lam, params.use_cutmix


def test_lambda_distributions_and_switch_probability(timm):
    from timm.data.mixup import cutmix_bbox_and_lam
    n = 4000
    keys = jax.random.split(jax.random.key(0), 2 * n)
    lam, cutmix = map(np.asarray, draws(keys[:n], 1.0, 0.5))
    assert abs(cutmix.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # Mixup: lambda ~ Beta(0.8, 0.8).
    assert stats.kstest(lam[~cutmix], stats.beta(0.8, 0.8).cdf).pvalue > 0.01
    # CutMix: Beta(1, 1), corrected by the clipped box, as timm draws it.
    np.random.seed(0)
    reference = [cutmix_bbox_and_lam((16, 16), np.random.beta(1.0, 1.0))[1] for _ in range(n)]
    assert stats.ks_2samp(lam[cutmix], reference).pvalue > 0.01
    # Another switch probability; a batch is left alone (lam = 1) with probability 1 - prob.
    lam, cutmix = map(np.asarray, draws(keys[n:], 0.7, 0.2))
    applied = (lam < 1) | cutmix  # a CutMix box can be empty: lam 1
    assert abs(applied.mean() - 0.7) < 4 * np.sqrt(0.21 / n)
    assert abs(cutmix[applied].mean() - 0.2) < 4 * np.sqrt(0.16 / applied.sum())


def test_mix_without_mixing_keeps_the_batch_and_smooths_the_labels():
    images, labels = batch(2)
    run = jax.jit(lambda prob: mix.mix(
        jax.random.key(3), jnp.asarray(images), jnp.asarray(labels), NUM_CLASSES,
        mixup_alpha=0.8, cutmix_alpha=1.0, prob=prob, label_smoothing=SMOOTHING))
    got_x, got_t = run(0.0)
    np.testing.assert_array_equal(got_x, images)
    want = np.full((len(labels), NUM_CLASSES), SMOOTHING / NUM_CLASSES, np.float32)
    want[np.arange(len(labels)), labels] += 1 - SMOOTHING
    np.testing.assert_allclose(got_t, want, atol=1e-7)
    mixed_x, mixed_t = run(1.0)
    assert np.abs(np.asarray(mixed_x) - images).max() > 0.1
    np.testing.assert_allclose(np.asarray(mixed_t).sum(-1), 1.0, atol=1e-6)


def test_mixing_with_label_smoothing_is_valid(load_config):
    config = load_config('digits.py', ('mixup_alpha', '0.8'), ('cutmix_alpha', '1.0'),
                         ('label_smoothing', '0.1'), ('ema_decay', '0.99996'))
    config_lib.validate(config)
