import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.networks import EDMPrecond, build_edm_network, edm_scalings, fast_inference, tiny_songunet_kwargs

FIXTURES = Path(__file__).parent / 'fixtures' / 'edm'
NETWORKS = json.loads((FIXTURES / 'networks.json').read_text())
TINY = sorted(NETWORKS['tiny_fixtures'])
PAPER = sorted(NETWORKS['paper_networks'])


def load_tiny(name):
    """(network with the fixture's weights in eval mode, x, sigma, class_labels, EDM's output)."""
    data = np.load(FIXTURES / f'{name}.npz')
    net = build_edm_network(**NETWORKS['tiny_fixtures'][name]['constructor_kwargs']).eval()
    net.load_state_dict({k.removeprefix('param/'): torch.from_numpy(data[k]) for k in data if k.startswith('param/')}, strict=True)
    labels = torch.from_numpy(data['input/class_labels']) if 'input/class_labels' in data else None
    return net, torch.from_numpy(data['input/x']), torch.from_numpy(data['input/sigma']), labels, torch.from_numpy(data['output/denoised'])


@pytest.mark.parametrize('name', TINY)
def test_tiny_fixture_reproduces_edm(name):
    net, x, sigma, labels, denoised = load_tiny(name)
    assert sum(p.numel() for p in net.parameters()) == NETWORKS['tiny_fixtures'][name]['num_params']
    with torch.no_grad():
        out = net(x, sigma, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, denoised, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', PAPER)
def test_paper_network_matches_edm_state_dict(name):
    spec = NETWORKS['paper_networks'][name]
    with torch.device('meta'):
        net = build_edm_network(**spec['constructor_kwargs'])
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == spec['state_dict']
    assert sum(p.numel() for p in net.parameters()) == spec['num_params']


def test_edm_scalings_closed_form():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
    torch.testing.assert_close(c_skip, 0.25 / (sigma ** 2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / torch.sqrt(sigma ** 2 + 0.25))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma ** 2 + 0.25))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    torch.testing.assert_close(c_skip[1], torch.tensor(0.5, dtype=torch.float64))


def test_sigma_as_float_scalar_or_batch():
    net, x, _, labels, _ = load_tiny('ddpmpp_tiny_cond')
    with torch.no_grad():
        batch = net(x, torch.full([4], 2.5), labels)
        torch.testing.assert_close(net(x, 2.5, labels), batch, rtol=0, atol=1e-6)
        torch.testing.assert_close(net(x, torch.tensor(2.5), labels), batch, rtol=0, atol=1e-6)


def test_integer_labels_equal_one_hot():
    net, x, sigma, labels, denoised = load_tiny('adm_tiny_cond')
    with torch.no_grad():
        out = net(x, sigma, labels.argmax(dim=1))
    torch.testing.assert_close(out, denoised, rtol=0, atol=1e-5)


def test_label_dropout_one_drops_every_label():
    kwargs = tiny_songunet_kwargs(8, 1, label_dim=10) | dict(label_dropout=1.0)
    torch.manual_seed(0)
    net = build_edm_network(**kwargs).train()
    x = torch.randn(3, 1, 8, 8)
    labels = torch.tensor([1, 4, 7])
    with torch.no_grad():
        dropped = net(x, 1.0, labels)
        zeros = net(x, 1.0, torch.zeros(3, 10))
    assert torch.equal(dropped, zeros)


@pytest.mark.parametrize('options', [
    dict(embedding_type='fourier', channel_mult_noise=2, encoder_type='residual', resample_filter=[1, 3, 3, 1]),
    dict(encoder_type='skip', decoder_type='skip'),
    dict(augment_dim=9),
])
def test_songunet_variants_run(options):
    kwargs = tiny_songunet_kwargs(8, 3) | options
    net = build_edm_network(**kwargs).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, 10.0]))
    assert out.shape == x.shape and out.isfinite().all()
    keys = net.state_dict().keys()
    if options.get('embedding_type') == 'fourier':
        assert 'model.map_noise.freqs' in keys and 'model.enc.4x4_aux_residual.weight' in keys
    if options.get('decoder_type') == 'skip':
        assert 'model.enc.4x4_aux_skip.weight' in keys and 'model.dec.8x8_aux_up.resample_filter' in keys
    if options.get('augment_dim'):
        assert net.state_dict()['model.map_augment.weight'].shape == (16, 9)


def test_tiny_songunet_kwargs_runs_on_digits():
    net = build_edm_network(**tiny_songunet_kwargs(8, 1, label_dim=10)).eval()
    assert sum(p.numel() for p in net.parameters()) < 200_000
    assert net.model.enc['4x4_block0'].num_heads == 1 and net.model.enc['8x8_block0'].num_heads == 0
    with torch.no_grad():
        out = net(torch.randn(5, 1, 8, 8), torch.rand(5) * 80 + 0.002, torch.arange(5))
    assert out.shape == (5, 1, 8, 8) and out.isfinite().all()


def test_channels_last_and_bf16_autocast():
    net, x, sigma, labels, denoised = load_tiny('ddpmpp_tiny_cond')
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(net(x, sigma, labels), denoised, rtol=0, atol=1e-5)
    with fast_inference('cpu'):
        out = net(x, sigma, labels)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert 0 < (out - denoised).norm() / denoised.norm() < 0.02


def test_bad_arguments_raise_clear_errors():
    kwargs = tiny_songunet_kwargs(8, 1)
    with pytest.raises(ValueError, match='model_type'):
        build_edm_network(**kwargs | dict(model_type='UNet2D'))
    with pytest.raises(TypeError, match='num_res_blocks'):
        build_edm_network(**kwargs | dict(num_res_blocks=2))
    with pytest.raises(ValueError, match='encoder_type'):
        build_edm_network(**kwargs | dict(encoder_type='fancy'))
    with pytest.raises(ValueError, match='s_path'):
        EDMPrecond(**kwargs | dict(s_path=True))


def test_bad_inputs_raise_clear_errors():
    net = build_edm_network(**tiny_songunet_kwargs(8, 1, label_dim=10))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match='class_labels'):
        net(x, 1.0)
    with pytest.raises(ValueError, match='class_labels'):
        net(x, 1.0, torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r'\(B, 1, 8, 8\)'):
        net(torch.randn(2, 3, 8, 8), 1.0, torch.arange(2))
    with pytest.raises(ValueError, match='sigma'):
        net(x, torch.ones(3), torch.arange(2))
