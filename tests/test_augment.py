from dataclasses import replace

import pytest
import torch

from selfsup.augment import PRESETS, augment, gaussian_blur, preset
from selfsup.errors import ConfigError


def batch(n=16, c=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(name, channels):
    x = batch(c=channels)
    y = augment(x, preset(name, channels, size=24), torch.Generator().manual_seed(0))
    assert y.shape == (16, channels, 24, 24) and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1


def test_same_seed_same_views_other_seed_other_views():
    x, a = batch(), preset("simclr", 3)
    v1 = augment(x, a, torch.Generator().manual_seed(3))
    v2 = augment(x, a, torch.Generator().manual_seed(3))
    v3 = augment(x, a, torch.Generator().manual_seed(4))
    assert torch.equal(v1, v2) and not torch.allclose(v1, v3)


def test_each_image_gets_its_own_parameters():
    x = batch(n=1).expand(32, -1, -1, -1).contiguous()  # the same image 32 times
    y = augment(x, preset("simclr", 3), torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:50].tolist()) for v in y}
    assert len(distinct) == 32


def test_identity_and_flip_are_exact():
    x = batch()
    none = preset("none", 3)
    assert torch.allclose(augment(x, none), x.float() / 255, atol=1e-5)
    flip = replace(none, flip_p=1.0)
    assert torch.allclose(augment(x, flip), x.float().flip(-1) / 255, atol=1e-5)


def test_uint8_and_float_inputs_agree():
    x, a = batch(), preset("simclr", 3)
    u = augment(x, a, torch.Generator().manual_seed(1))
    f = augment(x.float() / 255, a, torch.Generator().manual_seed(1))
    assert torch.allclose(u, f, atol=1e-6)


def test_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    noise = torch.rand(2, 1, 32, 32)
    out = gaussian_blur(noise, torch.tensor([0.1, 2.0]))
    assert out[1].std() < 0.6 * noise[1].std()  # strong blur
    assert torch.allclose(out[0], noise[0], atol=1e-3)  # sigma 0.1 is ~identity


def test_hue_and_saturation_leave_grey_images_grey():
    x = torch.rand(8, 1, 16, 16).expand(-1, 3, -1, -1)
    a = replace(preset("none", 3), jitter_p=1.0, brightness=0, contrast=0, saturation=0.9, hue=0.5)
    y = augment(x, a, torch.Generator().manual_seed(0))
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-5) and torch.allclose(y[:, 1], y[:, 2], atol=1e-5)


def test_greyscale_probability_one_makes_channels_equal():
    a = replace(preset("none", 3), grey_p=1.0)
    y = augment(batch(), a)
    assert torch.allclose(y[:, 0], y[:, 2])


def test_solarize_inverts_bright_pixels():
    a = replace(preset("none", 1), solarize_p=1.0)
    y = augment(torch.tensor([[[[0, 100, 200, 255]]]], dtype=torch.uint8).expand(1, 1, 4, 4), a)
    assert torch.allclose(y[0, 0, 0], torch.tensor([0, 100 / 255, 1 - 200 / 255, 0]), atol=1e-5)


def test_auto_preset_and_unknown():
    assert preset("auto", 1).flip_p == 0 and preset("auto", 3).flip_p == 0.5
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        preset("fancy", 3)


def test_shear_slants_a_vertical_bar_the_way_the_matrix_says():
    x = torch.zeros(1, 1, 33, 33)
    x[..., 16] = 1.0  # a vertical bar through the centre
    a = replace(preset("none", 1), shear=30.0)
    y = augment(x.expand(64, -1, -1, -1).contiguous(), a, torch.Generator().manual_seed(0))
    cols = torch.arange(33.0)
    centre = (y[:, 0] * cols).sum(-1) / y[:, 0].sum(-1).clamp(min=1e-6)  # (64, 33): bar position per row
    slope = (centre[:, 28] - centre[:, 4]) / 24  # columns moved per row, top to bottom
    assert slope.abs().max() <= torch.tan(torch.tensor(30.0).deg2rad()) + 0.05  # |k| <= tan(30 degrees)
    assert (slope > 0.2).any() and (slope < -0.2).any()  # both directions are drawn
    assert torch.allclose(centre[:, 16], torch.full((64,), 16.0), atol=0.05)  # shear about the centre


def test_augment_args_change_single_fields_and_are_checked():
    a = preset("auto", 1, changes={"crop_scale": [0.6, 1], "rotate": 20, "shear": 10})
    assert a.crop_scale == (0.6, 1.0) and a.rotate == 20.0 and a.shear == 10.0 and a.flip_p == 0.0
    with pytest.raises(ConfigError, match="unknown augment_args field.*crop.*valid: crop_scale"):
        preset("auto", 1, changes={"crop": 0.5})
    with pytest.raises(ConfigError, match=r"crop_scale must be a range \[low, high\]"):
        preset("auto", 1, changes={"crop_scale": 0.5})
    with pytest.raises(ConfigError, match="rotate must be a non-negative number"):
        preset("auto", 1, changes={"rotate": "lots"})


def test_blur_is_the_separable_gaussian_of_its_definition():
    """Each image blurred with its own sigma: a 1-D Gaussian of k taps (normalised) along rows, then columns, with
    reflected borders, written here as a loop over pixels."""
    import math

    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 1.6])
    got = gaussian_blur(x, sigma)
    k = 3  # max(3, int(0.1 * 9) | 1)

    def reflect(i, n):
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    for b in range(2):
        w = [math.exp(-(j - k // 2) ** 2 / (2 * float(sigma[b]) ** 2)) for j in range(k)]
        w = [v / sum(w) for v in w]
        for c in (0, 2):
            img = x[b, c].tolist()
            rows = [[sum(w[j] * img[y][reflect(xx + j - k // 2, 11)] for j in range(k)) for xx in range(11)]
                    for y in range(9)]
            want = [[sum(w[j] * rows[reflect(y + j - k // 2, 9)][xx] for j in range(k)) for xx in range(11)]
                    for y in range(9)]
            assert torch.allclose(got[b, c], torch.tensor(want), atol=1e-5)


def test_cutout_greys_one_square_of_the_asked_side_and_leaves_the_rest():
    """A square of side 0.5 x 32 = 16 px (DeVries & Taylor's 16 px on CIFAR), clipped where its centre is near the
    border; every other pixel is the view without cutout, drawn from the same generator."""
    x = batch(n=64)
    plain = augment(x, PRESETS["simclr"], torch.Generator().manual_seed(3))
    cut = augment(x, replace(PRESETS["simclr"], cutout=0.5), torch.Generator().manual_seed(3))
    changed = (cut != plain).any(1)
    assert (cut.permute(0, 2, 3, 1)[changed] == 0.5).all()
    rows, cols = changed.any(2).sum(1), changed.any(1).sum(1)  # the square's extent along each axis
    assert rows.max() == 16 and cols.max() == 16 and (rows >= 8).all() and (cols >= 8).all()
    assert (changed.sum((1, 2)) <= rows * cols).all() and (changed.sum((1, 2)) >= rows * cols - 16).all()
    assert 0.1 < changed.float().mean() < 0.25  # 256 of 1,024 pixels when inside; less at the border
