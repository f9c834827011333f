import numpy as np
import pytest
import torch

from ctm.digits import fit_digits_teacher, load_digits_images
from ctm.teachers import TeacherError
from ctm.teachers.gmm import GaussianMixtureTeacher
from conftest import make_gmm


def brute_force_posterior_mean_1d(teacher, x, sigma):
    x0 = np.linspace(-4, 4, 200001)
    prior = sum(w * np.exp(-0.5 * (x0 - m[0]) ** 2 / c[0, 0]) / np.sqrt(2 * np.pi * c[0, 0])
                for w, m, c in zip(teacher.weights.numpy(), teacher.means.numpy(), teacher.covariances.numpy()))
    like = np.exp(-0.5 * (x - x0) ** 2 / sigma ** 2)
    return np.trapezoid(x0 * prior * like, x0) / np.trapezoid(prior * like, x0)


def test_denoiser_matches_brute_force_1d():
    teacher = make_gmm(1, K=3, seed=5)
    for sigma in [0.05, 0.3, 2.0]:
        for x in [-0.7, 0.1, 0.9]:
            expected = brute_force_posterior_mean_1d(teacher, x, sigma)
            got = teacher.denoise(torch.tensor([[x]], dtype=torch.float64), sigma).item()
            assert abs(got - expected) < 1e-6, (sigma, x, got, expected)


def test_denoiser_matches_brute_force_2d(gmm2d):
    g = np.linspace(-3, 3, 1201)
    X0 = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    prior = torch.logsumexp(torch.stack([
        torch.distributions.MultivariateNormal(m, c).log_prob(torch.from_numpy(X0)) + w.log()
        for w, m, c in zip(gmm2d.weights, gmm2d.means, gmm2d.covariances)]), 0).exp().numpy()
    for sigma in [0.1, 0.5]:
        for x in [np.array([0.2, -0.3]), np.array([-0.5, 0.6])]:
            post = prior * np.exp(-0.5 * ((X0 - x) ** 2).sum(1) / sigma ** 2)
            expected = (X0 * post[:, None]).sum(0) / post.sum()
            got = gmm2d.denoise(torch.from_numpy(x)[None], sigma)[0].numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_score_is_the_gradient_of_the_exact_log_density(gmm2d):
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    for sigma in [0.01, 0.4, 10.0]:
        grad, = torch.autograd.grad(gmm2d.log_prob(x, sigma).sum(), x)
        torch.testing.assert_close(gmm2d.score(x.detach(), sigma), grad, rtol=1e-8, atol=1e-8)


def test_log_prob_matches_scipy(gmm2d):
    from scipy.stats import multivariate_normal
    x = np.array([[0.3, -0.2]])
    sigma = 0.7
    expected = np.log(sum(w * multivariate_normal(m, c + sigma ** 2 * np.eye(2)).pdf(x[0]) for w, m, c in
                          zip(gmm2d.weights.numpy(), gmm2d.means.numpy(), gmm2d.covariances.numpy())))
    assert abs(gmm2d.log_prob(torch.from_numpy(x), sigma).item() - expected) < 1e-10


def test_save_load_roundtrip_and_bad_files(tmp_path):
    teacher = make_gmm(4, K=2, seed=1)
    teacher.image_shape = (1, 2, 2)
    path = tmp_path / "teacher.npz"
    teacher.save(path)
    loaded = GaussianMixtureTeacher.load(path)
    x = torch.randn(3, 1, 2, 2)
    assert torch.equal(loaded.denoise(x, 0.5), teacher.denoise(x, 0.5))
    assert loaded.digest() == teacher.digest() and loaded.image_shape == (1, 2, 2)
    np.savez(tmp_path / "other.npz", weights=np.ones(2) / 2)
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureTeacher.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a teacher")
    with pytest.raises(ValueError, match="not a readable"):
        GaussianMixtureTeacher.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        GaussianMixtureTeacher.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="image"):
        loaded.denoise(torch.randn(2, 5), 1.0)


def saved(tmp_path, **replace):
    """A small mixture's .npz with some of its arrays replaced."""
    teacher = make_gmm(4, K=2, seed=1)
    arrays = {"weights": teacher.weights.numpy(), "means": teacher.means.numpy(),
              "covariances": teacher.covariances.numpy(), "image_shape": np.array([1, 2, 2]), **replace}
    np.savez(tmp_path / "teacher.npz", **{k: v for k, v in arrays.items() if v is not None})
    return tmp_path / "teacher.npz", teacher


@pytest.mark.parametrize("name", ["weights", "means", "covariances"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_mixture_with_nan_or_inf_is_refused_naming_the_file_and_the_array(tmp_path, name, value):
    path, teacher = saved(tmp_path)
    array = getattr(teacher, name).numpy().copy()
    array.flat[1] = value
    path, _ = saved(tmp_path, **{name: array})
    with pytest.raises(TeacherError, match=rf"{path}: array '{name}' holds 1 of {array.size} values that are NaN"):
        GaussianMixtureTeacher.load(path)


def test_an_npz_without_an_array_names_the_missing_array(tmp_path):
    path, _ = saved(tmp_path, covariances=None)
    with pytest.raises(TeacherError) as e:
        GaussianMixtureTeacher.load(path)
    assert str(e.value) == (f"{path} is not a Gaussian-mixture teacher: it lacks the array 'covariances' (it holds "
                            "['image_shape', 'means', 'weights']); expected weights, means, covariances, image_shape")


@pytest.mark.parametrize("content", ["zip header", "truncated", "npy header"])
def test_a_garbage_npz_is_one_clean_error_naming_the_file(tmp_path, content):
    whole = saved(tmp_path)[0].read_bytes()
    path = tmp_path / "garbage.npz"
    path.write_bytes({"zip header": b"PK\x03\x04" + bytes(60), "truncated": whole[:len(whole) // 2],
                      "npy header": b"\x93NUMPY garbage"}[content])
    with pytest.raises(TeacherError, match=rf"{path} is not a readable .npz file \(\w+: .*\); expected a Gaussian"):
        GaussianMixtureTeacher.load(path)


def test_a_damaged_array_inside_the_npz_is_named(tmp_path):
    path, _ = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"covariances.npy") + 200  # inside that member's data: its CRC no longer matches
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TeacherError, match=rf"{path}: the array 'covariances' cannot be read .*damaged"):
        GaussianMixtureTeacher.load(path)


def test_digits_teacher():
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1 and images.max() == 1
    assert set(labels.tolist()) == set(range(10))
    teacher = fit_digits_teacher(n_components=3)
    assert teacher.means.shape == (3, 64) and teacher.image_shape == (1, 8, 8)
    x0 = teacher.sample(5, torch.Generator().manual_seed(0))
    assert x0.shape == (5, 1, 8, 8)
    # at tiny σ the denoiser returns (almost) its input; at huge σ it returns the data mean
    assert (teacher.denoise(x0, 1e-4) - x0).abs().max() < 1e-3
    mean = (teacher.weights[:, None] * teacher.means).sum(0).reshape(1, 1, 8, 8).float()
    assert (teacher.denoise(torch.zeros(1, 1, 8, 8), 1e4) - mean).abs().max() < 1e-3


def test_flow_map_inverts_and_composes(gmm2d):
    x = torch.randn(6, 2, dtype=torch.float64) * 5
    mid = gmm2d.flow_map(x, 5.0, 0.5)
    direct = gmm2d.flow_map(x, 5.0, 0.02)
    torch.testing.assert_close(gmm2d.flow_map(mid, 0.5, 0.02), direct, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gmm2d.flow_map(mid, 0.5, 5.0), x, atol=1e-6, rtol=1e-6)


def test_the_mixture_names_its_identity_and_solves_in_float64():
    teacher = make_gmm(4)
    identity = teacher.identity()
    assert identity == {"kind": "gmm", "digest": teacher.digest(), "image_shape": list(teacher.image_shape),
                        "label_dim": 0}
    assert teacher.compute_dtype == torch.float64 and teacher.network_kwargs is None
