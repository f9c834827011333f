import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.nn.utils import parametrize

import ctm.discriminator as discriminator
from ctm.diffaug import diff_augment
from ctm.discriminator import (
    DownBlock,
    PatchHead,
    ProjectedDiscriminator,
    RandomProjection,
    TimmFeatureNetwork,
    TinyFeatureNetwork,
    TorchvisionFeatureNetwork,
    build_discriminator,
)

EFFNET_FILE = "efficientnet_b0_rwightman-7f5810bc.pth"
VIT_FILE = "vit_b_16-c867db91.pth"
LITE0_DEIT = ("tf_efficientnet_lite0", "deit_base_distilled_patch16_224")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def effnet_file(tmp_path_factory):
    """Random efficientnet_b0 weights saved as torchvision's state dict."""
    path = tmp_path_factory.mktemp("weights") / EFFNET_FILE
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    """Random weights of the official pair, saved as the Hub's model.safetensors (lite0) and as a .pth (DeiT)."""
    import timm
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    nets = {name: timm.create_model(name, pretrained=False).eval() for name in LITE0_DEIT}
    save_file(nets[LITE0_DEIT[0]].state_dict(), folder / "lite0.safetensors")
    torch.save(nets[LITE0_DEIT[1]].state_dict(), folder / "deit.pth")
    return nets, dict(zip(LITE0_DEIT, [folder / "lite0.safetensors", folder / "deit.pth"]))


@pytest.fixture(scope="module")
def official_D(timm_files):
    """The official pair's discriminator, built from the random weights above."""
    return build_discriminator("+".join(LITE0_DEIT), weights_paths=timm_files[1])


def head_inputs(D, x):
    """The (C, H, W) of every head's input, heads in logit order."""
    shapes, hooks = [], [h.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[1:])))
                         for heads in D.heads for h in heads]
    D(x)
    for hook in hooks:
        hook.remove()
    return shapes


def n_down_blocks(head):
    return sum(isinstance(m, DownBlock) for m in head.net)


def count(tensors):
    return sum(t.numel() for t in tensors)


def imagenet_input(x):
    x = ((x + 1) / 2 - MEAN) / STD
    return F.interpolate(x, size=224, mode="bilinear", align_corners=False)


def test_tiny_output_shape():
    for img_channels, size in [(1, 8), (3, 32)]:
        D = build_discriminator("tiny", img_channels=img_channels).eval()
        x = torch.rand(2, img_channels, size, size) * 2 - 1
        # scales 16, 8, 4, 2, doubled by CSM to 32, 16, 8, 4 with cout * (1, 1, 2, 4) channels; DownBlocks down to
        # 8 (SingleDisc, end_sz=8), then a 4x4 conv: 5x5, 5x5, 5x5, 1x1 patch logits
        assert head_inputs(D, x) == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
        assert D(x).shape == (2, 76)
        assert len(D.heads) == 1 and [n_down_blocks(h) for h in D.heads[0]] == [2, 1, 0, 0]


def test_gradients_reach_heads_and_input_only():
    D = build_discriminator("tiny", img_channels=3, cout=16).train()
    net = D.feature_networks[0]
    assert not net.training  # frozen networks stay in eval mode
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    D(x).mean().backward()
    assert x.grad.abs().sum() > 0
    head_params = list(D.heads.parameters())
    assert head_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params)
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    assert list(D.projections.parameters()) == [] and len(list(D.projections.buffers())) == 16  # 4 CCM + 4 CSM convs
    assert all(not b.requires_grad for b in D.projections.buffers())
    trained = {n for n, p in D.named_parameters() if p.requires_grad}
    assert trained == {f"heads.{n}" for n, _ in D.heads.named_parameters()}


def test_trainable_tiny_network_gets_gradients():
    net = TinyFeatureNetwork(1, widths=(4, 8, 8, 8), resolution=32, trainable=True)
    D = ProjectedDiscriminator([net], cout=8).train()
    assert net.training
    D(torch.rand(2, 1, 8, 8) * 2 - 1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_frozen_init_is_fixed_by_seed():
    a, b, c = TinyFeatureNetwork(3, seed=0), TinyFeatureNetwork(3, seed=0), TinyFeatureNetwork(3, seed=1)
    assert torch.equal(a.stages[0][0].weight, b.stages[0][0].weight)
    assert not torch.equal(a.stages[0][0].weight, c.stages[0][0].weight)
    p = RandomProjection([4, 8, 8, 8], cout=4, seed=3)
    assert torch.equal(p.ccm[0].weight, RandomProjection([4, 8, 8, 8], cout=4, seed=3).ccm[0].weight)


def test_cross_scale_mixing_is_top_down():
    p = RandomProjection([2, 2, 2, 2], cout=2)
    features = [torch.randn(1, 2, r, r) for r in (8, 4, 2, 1)]
    out = p(features)
    # F_RandomProj(expand=True): CCM to cout * (1, 2, 4, 8); FeatureFusionBlock: (add) -> x2 bilinear with
    # align_corners=True -> 1x1 conv halving the channels except at the finest scale: cout * (1, 1, 2, 4)
    assert [c.weight.shape[:2] for c in p.ccm] == [(2, 2), (4, 2), (8, 2), (16, 2)]
    assert [c.weight.shape[:2] for c in p.csm] == [(2, 2), (2, 4), (4, 8), (8, 16)]
    assert [f.shape[1:] for f in out] == [(2, 16, 16), (2, 8, 8), (4, 4, 4), (8, 2, 2)] and p.channels == [2, 2, 4, 8]
    up = lambda h: F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
    assert torch.allclose(out[3], p.csm[3](up(p.ccm[3](features[3]))))
    assert torch.allclose(out[2], p.csm[2](up(out[3] + p.ccm[2](features[2]))))
    assert torch.allclose(out[0], p.csm[0](up(out[1] + p.ccm[0](features[0]))))
    changed = [f.clone() for f in features]
    changed[0] += 1  # the finest scale never reaches coarser outputs
    assert all(torch.equal(a, b) for a, b in zip(p(changed)[1:], out[1:]))


def test_diffaug_only_in_training_and_once_per_backbone(monkeypatch):
    calls = []
    monkeypatch.setattr(discriminator, "diff_augment", lambda x, policy: calls.append(policy) or x)
    D = ProjectedDiscriminator([TinyFeatureNetwork(1), TinyFeatureNetwork(1, seed=1)], diffaug_policy="cutout", cout=8)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    D.eval()
    assert torch.equal(D(x), D(x)) and calls == []
    D.train()
    assert D(x).shape == (2, 152)  # 2 x 76 (test_tiny_output_shape)
    assert calls == ["cutout", "cutout"]


@pytest.mark.slow  # builds the paper-size backbones
def test_efficientnet_from_local_weights(effnet_file):
    D = build_discriminator("efficientnet_b0", weights_paths={"efficientnet_b0": effnet_file}).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    # stages at strides 4, 8, 16, 32 of 224: 56, 28, 14, 7, doubled by CSM; 4, 3, 2, 1 DownBlocks to 7, then a 4x4
    # conv: every head gives 4x4 patch logits
    assert D(x).shape == (2, 64)
    net, model = D.feature_networks[0], torchvision.models.efficientnet_b0()
    model.load_state_dict(torch.load(effnet_file, weights_only=True))
    model.eval()
    features = net(x)
    assert [f.shape[1:] for f in features] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert torch.allclose(features[-1], model.features[:8](imagenet_input(x)), atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())
    gray = torch.rand(1, 1, 16, 16) * 2 - 1
    assert torch.allclose(net(gray)[0], net(gray.expand(-1, 3, -1, -1))[0])


@pytest.mark.slow  # builds the paper-size backbones
def test_official_pair_of_backbones_has_eight_heads(effnet_file):
    path = effnet_file.parent / VIT_FILE
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(weights=None).eval()
    torch.save(vit.state_dict(), path)
    paths = {"efficientnet_b0": effnet_file, "vit_b_16": path}
    D = build_discriminator("efficientnet_b0+vit_b_16", weights_paths=paths).eval()
    assert sum(len(h) for h in D.heads) == 8
    features, tokens = [], []
    D.projections[1].register_forward_pre_hook(lambda module, args: features.extend(args[0]))
    vit.encoder.layers[8].register_forward_hook(lambda module, args, out: tokens.append(out))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert D(x).shape == (1, 128)
    assert [f.shape[1:] for f in features] == [(768, 56, 56), (768, 28, 28), (768, 14, 14), (768, 7, 7)]
    vit(imagenet_input(x))
    assert torch.allclose(features[2].flatten(2).transpose(1, 2), tokens[0][:, 1:], atol=1e-4)
    assert head_inputs(D, x) == OFFICIAL_HEAD_INPUTS * 2
    # fixed 1x1 convs with biases: CCM 768 -> 64, 128, 256, 512 (738240), CSM as for the official pair (176640)
    assert count(D.projections[1].buffers()) == sum(768 * o + o for o in (64, 128, 256, 512)) + 176640 == 914880


def test_weight_file_errors(effnet_file, tmp_path):
    with pytest.raises(FileNotFoundError, match=EFFNET_FILE):
        build_discriminator("efficientnet_b0")
    with pytest.raises(FileNotFoundError, match=f"{VIT_FILE}.*cannot be downloaded"):
        TorchvisionFeatureNetwork("vit_b_16", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not a torchvision vit_b_16 state dict"):
        TorchvisionFeatureNetwork("vit_b_16", effnet_file)
    with pytest.raises(ValueError, match="unknown feature network 'deit'"):
        build_discriminator("tiny+deit")


@pytest.mark.slow  # builds the paper-size backbones
def test_official_timm_pair_reads_the_official_stages(timm_files, official_D):
    nets, D = timm_files[0], official_D
    assert sum(len(h) for h in D.heads) == 8 and not any(p.requires_grad for p in D.feature_networks.parameters())
    D.train()
    assert not any(m.training for net in D.feature_networks for m in net.modules())  # frozen: always in eval mode
    lite0, deit = D.feature_networks
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert D.eval()(x).shape == (2, 128)
    assert [f.shape[1:] for f in lite0(x)] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert [f.shape[1:] for f in deit(x)] == [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]
    # lite0 normalises with mean = std = 0.5, i.e. takes x in [-1, 1] as it is; its last stage is timm's last block
    h = nets[LITE0_DEIT[0]].bn1(nets[LITE0_DEIT[0]].conv_stem(F.interpolate(x, size=224, mode="bilinear")))
    assert torch.allclose(lite0(x)[-1], nets[LITE0_DEIT[0]].blocks(h), atol=1e-5)
    # DeiT: the patch tokens (class and distillation tokens dropped) after block 12 feed the last reassembly
    tokens, maps = [], []
    nets[LITE0_DEIT[1]].blocks[11].register_forward_hook(lambda module, args, out: tokens.append(out))
    deit.reassemble[3].register_forward_pre_hook(lambda module, args: maps.append(args[0]))
    nets[LITE0_DEIT[1]].forward_features(imagenet_input(x))
    deit(x)
    assert torch.allclose(maps[0].flatten(2).transpose(1, 2), tokens[0][:, 2:], atol=1e-5)


def test_timm_weight_file_errors(timm_files, tmp_path):
    _, paths = timm_files
    with pytest.raises(FileNotFoundError, match="timm/deit_base_distilled_patch16_224.fb_in1k.*cannot be downloaded"):
        build_discriminator(LITE0_DEIT[1])
    with pytest.raises(ValueError, match="is not a timm deit_base_distilled_patch16_224 state dict"):
        TimmFeatureNetwork(LITE0_DEIT[1], paths[LITE0_DEIT[0]])
    (tmp_path / "cut.safetensors").write_bytes(paths[LITE0_DEIT[0]].read_bytes()[:1000])
    with pytest.raises(ValueError, match="is not a timm tf_efficientnet_lite0 state dict"):
        TimmFeatureNetwork(LITE0_DEIT[0], tmp_path / "cut.safetensors")


# F_RandomProj (cout=64, expand=True) then FeatureFusionBlock's x2 upsampling: 56, 28, 14, 7 -> 112, 56, 28, 14 pixels
# with 64, 64, 128, 256 channels, whatever the backbone
OFFICIAL_HEAD_INPUTS = [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14)]
# SingleDisc(nc, start_sz=128, 64, 32, 16; end_sz=8), widths nfc_midas {128: nc, 64: 64, 32: 128, 16: 256, 8: 512}
# (nfc[start_sz] = nc). DownBlock(i, o) = SN-conv 4x4 with bias + BatchNorm: 16io + o + 2o; last conv 512 -> 1, 4x4,
# no bias: 8192.
down_block = lambda i, o: 16 * i * o + 3 * o
OFFICIAL_HEAD_PARAMS = [
    down_block(64, 64) + down_block(64, 128) + down_block(128, 256) + down_block(256, 512) + 8192,
    down_block(64, 128) + down_block(128, 256) + down_block(256, 512) + 8192,
    down_block(128, 256) + down_block(256, 512) + 8192,
    down_block(256, 512) + 8192,
]


@pytest.mark.slow  # builds the paper-size backbones
def test_official_pair_heads_see_the_official_maps(official_D):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert head_inputs(official_D.eval(), x) == OFFICIAL_HEAD_INPUTS * 2


def test_official_pair_parameter_counts(official_D):
    assert OFFICIAL_HEAD_PARAMS == [2829120, 2763392, 2631936, 2106880]
    assert [count(h.parameters()) for heads in official_D.heads for h in heads] == OFFICIAL_HEAD_PARAMS * 2
    trainable = [p for p in official_D.parameters() if p.requires_grad]
    assert count(trainable) == 2 * sum(OFFICIAL_HEAD_PARAMS) == 20662656
    # fixed projections (1x1 convs with biases): CCM from the backbone widths to 64, 128, 256, 512, and CSM
    # 512 -> 256, 256 -> 128, 128 -> 64, 64 -> 64 (= 131328 + 32896 + 8256 + 4160 = 176640)
    ccm = lambda widths: sum(c * o + o for c, o in zip(widths, (64, 128, 256, 512)))
    assert ccm((24, 40, 112, 320)) == 200128 and ccm((96, 192, 384, 768)) == 523200
    assert [count(p.buffers()) for p in official_D.projections] == [200128 + 176640, 523200 + 176640]


def test_official_pair_head_structure(official_D):
    for heads in official_D.heads:
        assert [n_down_blocks(h) for h in heads] == [4, 3, 2, 1]  # start_sz 128, 64, 32, 16 down to 8
        for head, (c, _, _) in zip(heads, OFFICIAL_HEAD_INPUTS):
            blocks, last = list(head.net)[:-1], head.net[-1]
            widths = [c] + [b[0].out_channels for b in blocks]
            assert widths == [c, *[64, 64, 128, 256, 512][-len(blocks):]]
            for conv, bn, act in blocks:
                assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))
                assert conv.bias is not None and parametrize.is_parametrized(conv, "weight")
                assert isinstance(bn, torch.nn.BatchNorm2d) and act.negative_slope == 0.2
            assert (last.in_channels, last.out_channels, last.kernel_size, last.padding) == (512, 1, (4, 4), (0, 0))
            assert last.bias is None and parametrize.is_parametrized(last, "weight")


def test_head_start_size_snaps_to_the_nearest_width_key():
    # SingleDisc: a start_sz not in nfc_midas becomes its nearest key (argmin: the smaller one on a tie)
    assert [n_down_blocks(PatchHead(8, r)) for r in (112, 96, 48, 12, 8, 4)] == [4, 3, 2, 0, 0, 0]
    assert PatchHead(8, 4).net[-1].in_channels == 8  # under 8 pixels the map keeps its channels to the last conv


def test_feature_maps_that_do_not_fit_the_heads_are_refused():
    with pytest.raises(ValueError, match="2-pixel feature map is too small"):
        ProjectedDiscriminator([TinyFeatureNetwork(1, resolution=16)], cout=8)
    with pytest.raises(ValueError, match=r"\[20, 10, 5, 3\]-pixel maps.*divisible by 16"):
        ProjectedDiscriminator([TinyFeatureNetwork(1, resolution=40)], cout=8)


def test_pixel_discriminator_reads_tiny_images_with_its_own_trainable_features():
    D = build_discriminator("pixels", img_channels=1, img_resolution=8)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [1, 2, 1]  # 8 -> 8 -> 4 -> 4x4 logits
    assert all(hasattr(c, "parametrizations") for c in convs)  # spectrally normalised
    assert all(p.requires_grad for p in D.parameters())
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    D.eval()
    assert D(x).shape == (5, 16) and torch.equal(D(x), D(x))  # no augmentation outside training
    D.train()
    D(x).mean().backward()
    assert all(p.grad is not None for p in D.parameters())
    assert build_discriminator("pixels", img_channels=3, img_resolution=32)(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="power-of-two"):
        build_discriminator("pixels", img_channels=1, img_resolution=6)
    with pytest.raises(ValueError, match="img_resolution"):
        build_discriminator("pixels", img_channels=1)
    with pytest.raises(ValueError, match="8-pixel images"):
        D(torch.zeros(1, 1, 16, 16))


def test_pixel_discriminator_reads_images_clamped_to_the_data_range():
    """A digits student's x_est overshoots [-1, 1] (a quarter of its pixels fall below -1, where no real pixel lies);
    D reads it as the sampler outputs it, clamped: out-of-range values change no logit and take no gradient."""
    D = build_discriminator("pixels", img_channels=1, img_resolution=8)
    x = torch.linspace(-2, 2, 4 * 64).reshape(4, 1, 8, 8)
    D.eval()
    assert torch.equal(D(x), D(x.clamp(-1, 1))) and not torch.equal(D(x), D(x / 2))
    x.requires_grad_()
    D.train()(x).sum().backward()
    outside = x.detach().abs() > 1
    assert outside.any() and (x.grad[outside] == 0).all() and (x.grad[~outside] != 0).any()


def test_pixel_discriminator_augments_by_the_configured_policy_only():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    seen = []
    for policy in ("", "translation"):
        D = build_discriminator("pixels", img_channels=1, img_resolution=8, diffaug_policy=policy).train()
        D.net.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
        torch.manual_seed(0)
        D(x)
    torch.manual_seed(0)
    assert torch.equal(seen[0], x)  # no DiffAugment: training mode reads the images as they are
    assert torch.equal(seen[1], diff_augment(x, "translation")) and not torch.equal(seen[1], x)


def test_train_state_builds_d_with_the_configured_diffaug():
    from pipeline.config import EMBEDDED_DEFAULT, load_config
    from pipeline.train.state import build_state
    cfg = load_config(EMBEDDED_DEFAULT, ["train.gan_start=0", "train.diffaug=translation,cutout",
                                         "student.init_from_teacher=false"])
    kwargs = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    assert build_state(cfg, kwargs, None, "cpu").D.diffaug_policy == "translation,cutout"


def test_digits_cnn_discriminator_reads_frozen_digits_features_through_trainable_heads():
    from ctm.digits_cnn import digits_feature_network
    D = build_discriminator("digits_cnn", img_channels=1, img_resolution=8)
    net = D.feature_networks[0]
    shipped = digits_feature_network()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), shipped.state_dict().values()))
    assert not any(p.requires_grad for p in net.parameters())
    assert [h.shape[-1] for h in net(torch.zeros(1, 1, 8, 8))] == [16, 8, 4, 2]
    D.train()
    assert not net.training  # frozen: stays in eval mode
    x = torch.rand(3, 1, 8, 8, requires_grad=True) * 2 - 1
    D(x).mean().backward()
    assert all(p.grad is not None for h in D.heads for p in h.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="grey digits"):
        build_discriminator("digits_cnn", img_channels=3)


@pytest.mark.slow
def test_digits_cnn_weights_rebuild_exactly():
    from ctm.digits_cnn import digits_feature_network, train_digits_cnn
    rebuilt, shipped = train_digits_cnn().trunk.state_dict(), digits_feature_network().state_dict()
    assert rebuilt.keys() == shipped.keys()
    assert all(torch.equal(rebuilt[k], shipped[k]) for k in shipped)
