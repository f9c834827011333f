import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.student import CTMPrecond, build_ctm_student, is_s_path_key, student_from_teacher

FIXTURES = Path(__file__).parent / 'fixtures' / 'edm'
TINY = json.loads((FIXTURES / 'networks.json').read_text())['tiny_fixtures']
FAMILIES = ['ddpmpp_tiny_cond', 'adm_tiny_cond']


def load_teacher(name):
    """(EDM teacher with the fixture's weights in eval mode, x, class_labels)."""
    data = np.load(FIXTURES / f'{name}.npz')
    teacher = build_edm_network(**TINY[name]['constructor_kwargs']).eval()
    teacher.load_state_dict({k.removeprefix('param/'): torch.from_numpy(data[k]) for k in data if k.startswith('param/')})
    labels = torch.from_numpy(data['input/class_labels']) if 'input/class_labels' in data else None
    return teacher, torch.from_numpy(data['input/x']), labels


def zero_s_path(student):
    with torch.no_grad():
        for name, p in student.named_parameters():
            if is_s_path_key(name):
                p.zero_()


@pytest.mark.parametrize('name', FAMILIES + ['ddpmpp_tiny_uncond'])
def test_student_holds_teacher_weights_bit_for_bit(name):
    teacher, _, _ = load_teacher(name)
    torch.manual_seed(0)
    student = student_from_teacher(teacher)
    teacher_sd, student_sd = teacher.state_dict(), student.state_dict()
    for key, value in teacher_sd.items():
        assert torch.equal(student_sd[key], value), key
    s_keys = [k for k in student_sd if k not in teacher_sd]
    assert s_keys and all(is_s_path_key(k) for k in s_keys)
    assert {'model.map_layer0_s.weight', 'model.map_layer1_s.bias'} <= set(s_keys)
    for key in s_keys:
        assert student_sd[key].shape == teacher_sd[key.replace('_s.', '.')].shape
    assert student.model.map_layer0_s.weight.std() > 0 and student.model.dec[list(student.model.dec)[0]].affine_s.weight.std() > 0


@pytest.mark.parametrize('name', FAMILIES)
def test_G_at_s_equal_t_is_identity(name):
    teacher, x, labels = load_teacher(name)
    student = student_from_teacher(teacher).eval()
    t = torch.tensor([80.0, 5.0, 0.5, 0.002])
    with torch.no_grad():
        assert torch.equal(student(x, t, t, labels), x)
        assert torch.equal(student(x, 1.3, 1.3, labels), x)


@pytest.mark.parametrize('name', FAMILIES)
def test_zeroed_s_path_on_diagonal_is_the_teacher_denoiser(name):
    teacher, x, labels = load_teacher(name)
    student = student_from_teacher(teacher).eval()
    zero_s_path(student)
    t = torch.tensor([80.0, 5.0, 0.5, 0.01])
    with torch.no_grad():
        torch.testing.assert_close(student.g(x, t, t, labels), teacher(x, t, labels), rtol=0, atol=1e-6)


@pytest.mark.parametrize('name', FAMILIES)
def test_s_path_changes_the_output(name):
    teacher, x, labels = load_teacher(name)
    torch.manual_seed(0)
    student = student_from_teacher(teacher).eval()
    t = torch.full([4], 5.0)
    with torch.no_grad():
        g_near, g_far = student.g(x, t, 4.0, labels), student.g(x, t, 0.01, labels)
        assert (g_near - g_far).abs().max() > 1e-3
        assert (student.g(x, t, t, labels) - teacher(x, t, labels)).abs().max() > 1e-3


@pytest.mark.parametrize('name', FAMILIES)
def test_G_is_the_euler_combination_of_x_and_g(name):
    teacher, x, labels = load_teacher(name)
    student = student_from_teacher(teacher).eval()
    t = torch.tensor([80.0, 5.0, 0.5, 0.01])
    s = torch.tensor([2.5, 0.002, 0.5, 0.005])
    with torch.no_grad():
        g = student.g(x, t, s, labels)
        G = student(x, t, s, labels)
    ratio = (s / t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(G, ratio * x + (1 - ratio) * g, rtol=0, atol=1e-6)
    assert torch.equal(G[2], x[2])


def test_last_layer_weight():
    songunet = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    assert songunet.last_layer_weight() is songunet.model.dec['8x8_aux_conv'].weight
    adm = student_from_teacher(load_teacher('adm_tiny_cond')[0])
    assert adm.last_layer_weight() is adm.model.dec['16x16_block1'].conv1.weight
    assert list(adm.model.dec)[-1] == '16x16_block1'


def test_student_keeps_configuration_and_dropout():
    teacher, _, _ = load_teacher('ddpmpp_tiny_cond')
    student = student_from_teacher(teacher)
    assert isinstance(student, CTMPrecond)
    assert (student.sigma_data, student.label_dim, student.img_resolution, student.img_channels) == (0.5, 10, 16, 3)
    assert student.training and student.model.enc['16x16_block0'].dropout == 0.13


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match='EDMPrecond'):
        student_from_teacher(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='s_path'):
        build_ctm_student(**tiny_songunet_kwargs(8, 1) | dict(s_path=False))
    student = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    with pytest.raises(ValueError, match='^s must'):
        student(torch.randn(2, 1, 8, 8), 1.0, torch.ones(3))
    with pytest.raises(ValueError, match='noise_labels_s'):
        student.model(torch.randn(2, 1, 8, 8), torch.zeros(2), None)
