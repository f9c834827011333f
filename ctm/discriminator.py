"""Projected multi-scale discriminator (Projected GAN, Sauer et al. 2021; StyleGAN-XL), as in CTM's GAN loss
(docs/method.md §3).

Frozen feature networks -> fixed random cross-channel / cross-scale mixing -> one trainable patch head per scale,
as Projected GAN's pg_modules (F_RandomProj, MultiScaleD, SingleDisc) that CTM uses.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ctm.diffaug import diff_augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_WEIGHT_FILES = {  # torchvision's IMAGENET1K_V1 state dicts
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
    "vit_b_16": "vit_b_16-c867db91.pth",
}
VIT_BLOCKS = (2, 5, 8, 11)  # transformer blocks read out as the four scales (StyleGAN-XL's DeiT hooks)
TIMM_WEIGHTS = {  # the official pair (timm names) and where their ImageNet weights are published (Hugging Face Hub)
    "tf_efficientnet_lite0": "timm/tf_efficientnet_lite0.in1k",
    "deit_base_distilled_patch16_224": "timm/deit_base_distilled_patch16_224.fb_in1k",
}
DPT_WIDTHS = (96, 192, 384, 768)  # ViT-B/16 token maps -> four scales (DPT's reassemble, as StyleGAN-XL reads DeiT)
BUILT_IN = ("pixels", "tiny", "digits_cnn")  # discriminator kinds that need no weights file of the user's
HEAD_WIDTHS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}  # SingleDisc's nfc_midas


class FeatureNetwork(nn.Module):
    """Protocol: forward(x in [-1, 1], NCHW) -> list of 4 feature maps at decreasing resolutions.

    Attributes: `channels` (per map), `resolution` (input size it works at), `img_channels` (input channels).
    Unless trainable, it is frozen: no parameter requires grad and it stays in eval mode.
    """

    def __init__(self, channels, resolution, img_channels, trainable=False):
        super().__init__()
        self.channels, self.resolution = list(channels), resolution
        self.img_channels, self.trainable = img_channels, trainable

    def freeze_unless_trainable(self):
        self.requires_grad_(self.trainable)
        return self.train()

    def train(self, mode=True):
        return super().train(mode and self.trainable)

    def resize(self, x):
        if x.shape[-2:] == (self.resolution, self.resolution):
            return x
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)


class TinyFeatureNetwork(FeatureNetwork):
    """Four stride-2 conv stages, fixed random init (no download); inputs are resized to `resolution` (e.g. 8 -> 32)."""

    def __init__(self, img_channels, widths=(16, 32, 64, 128), resolution=32, trainable=False, seed=0):
        super().__init__(widths, resolution, img_channels, trainable)
        if len(widths) != 4 or resolution < 16:
            raise ValueError(f"TinyFeatureNetwork needs 4 widths and resolution >= 16, got {widths} and {resolution}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c_in = [img_channels, *widths[:-1]]
            self.stages = nn.ModuleList(
                nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.2)) for a, b in zip(c_in, widths)
            )
        self.freeze_unless_trainable()

    def forward(self, x):
        h, out = self.resize(x), []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out


def load_local_weights(name, weights_path, build, family, source):
    """build() with every weight read from the local file `weights_path` (.safetensors, or a torch .pth/.bin)."""
    if weights_path is None or not Path(weights_path).is_file():
        where = "no path was given" if weights_path is None else f"'{weights_path}' does not exist"
        raise FileNotFoundError(f"the '{name}' feature network needs {source}, but {where}. It cannot be downloaded "
                                f"here: place a copy on this machine and pass its path for '{name}'.")
    with torch.device("meta"):  # no random init: every weight comes from the file
        model = build()
    try:
        if str(weights_path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(weights_path))
        else:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, assign=True)
    except Exception as e:
        raise ValueError(f"'{weights_path}' is not a {family} {name} state dict: {' '.join(str(e).split())[:500]}") \
            from e
    return model


class PretrainedFeatureNetwork(FeatureNetwork):
    """A frozen ImageNet backbone at 224x224: x in [-1, 1] -> [0, 1] -> the backbone's normalisation -> bilinear
    resize -> `features`, by default the outputs of `self.stages`."""

    def __init__(self, channels, mean, std):
        super().__init__(channels, 224, 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def features(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features(self.resize(((x + 1) / 2 - self.mean) / self.std))


class TorchvisionFeatureNetwork(PretrainedFeatureNetwork):
    """torchvision's efficientnet_b0 or vit_b_16 from a local weights file; four stages at 224x224 input."""

    def __init__(self, arch, weights_path):
        import torchvision  # here, not at the top: importing it takes seconds in every Train worker that never uses it
        if arch not in TORCHVISION_WEIGHT_FILES:
            raise ValueError(f"unknown torchvision feature network '{arch}': use {list(TORCHVISION_WEIGHT_FILES)}")
        model = load_local_weights(arch, weights_path, lambda: getattr(torchvision.models, arch)(weights=None),
                                   "torchvision", f"torchvision's ImageNet weights '{TORCHVISION_WEIGHT_FILES[arch]}'")
        if arch == "efficientnet_b0":  # the stages Projected GAN reads from EfficientNet-lite0: strides 4, 8, 16, 32
            super().__init__((24, 40, 112, 320), IMAGENET_MEAN, IMAGENET_STD)
            f = model.features
            self.stages = nn.ModuleList([f[0:3], f[3], f[4:6], f[6:8]])
        else:
            super().__init__((768,) * 4, IMAGENET_MEAN, IMAGENET_STD)
            self.vit = model
        self.arch = arch
        self.freeze_unless_trainable()

    def features(self, x):
        """ViT: patch tokens after blocks 3, 6, 9, 12 as 14x14 maps, resampled to strides 4..32 (fixed resampling)."""
        if self.arch != "vit_b_16":
            return super().features(x)
        h = self.vit.conv_proj(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.vit.class_token.expand(len(h), -1, -1), h], dim=1)
        h = self.vit.encoder.dropout(h + self.vit.encoder.pos_embedding)
        maps = []
        for i, block in enumerate(self.vit.encoder.layers):
            h = block(h)
            if i in VIT_BLOCKS:
                maps.append(h[:, 1:].transpose(1, 2).unflatten(2, (14, 14)))
        up = lambda m, k: F.interpolate(m, scale_factor=k, mode="bilinear", align_corners=False)
        return [up(maps[0], 4), up(maps[1], 2), maps[2], F.avg_pool2d(maps[3], 2)]


class TimmFeatureNetwork(PretrainedFeatureNetwork):
    """The official code's frozen backbones (timm, local weights), read as Projected GAN / StyleGAN-XL read them:
    EfficientNet-lite0 after its stages at strides 4, 8, 16, 32; DeiT-B after blocks 3, 6, 9, 12, its patch tokens
    reassembled to strides 4, 8, 16, 32 by fixed random convolutions (DPT)."""

    def __init__(self, name, weights_path, seed=0):
        import timm
        if name not in TIMM_WEIGHTS:
            raise ValueError(f"unknown timm feature network '{name}': use {list(TIMM_WEIGHTS)}")
        model = load_local_weights(name, weights_path, lambda: timm.create_model(name, pretrained=False), "timm",
                                   f"its ImageNet weights (model.safetensors of {TIMM_WEIGHTS[name]} on the Hugging "
                                   "Face Hub)")
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
        if name == "tf_efficientnet_lite0":
            super().__init__((24, 40, 112, 320), mean, std)
            b = model.blocks
            self.stages = nn.ModuleList([nn.Sequential(model.conv_stem, model.bn1, *b[0:2]), b[2], b[3:5], b[5:]])
        else:
            super().__init__(DPT_WIDTHS, mean, std)
            self.vit = model
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                w, c = DPT_WIDTHS, model.embed_dim
                self.reassemble = nn.ModuleList([
                    nn.Sequential(nn.Conv2d(c, w[0], 1), nn.ConvTranspose2d(w[0], w[0], 4, stride=4)),
                    nn.Sequential(nn.Conv2d(c, w[1], 1), nn.ConvTranspose2d(w[1], w[1], 2, stride=2)),
                    nn.Conv2d(c, w[2], 1),
                    nn.Sequential(nn.Conv2d(c, w[3], 1), nn.Conv2d(w[3], w[3], 3, stride=2, padding=1))])
        self.freeze_unless_trainable()

    def features(self, x):
        if not hasattr(self, "vit"):
            return super().features(x)
        vit = self.vit
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # timm's forward_features
        maps = []
        for i, block in enumerate(vit.blocks):
            h = block(h)
            if i in VIT_BLOCKS:  # readout 'ignore': drop the class and distillation tokens
                maps.append(h[:, vit.num_prefix_tokens:].transpose(1, 2).unflatten(2, vit.patch_embed.grid_size))
        return [reassemble(m) for reassemble, m in zip(self.reassemble, maps)]


class FixedConv1x1(nn.Module):
    """A 1x1 conv with random, never-trained weights held as buffers (nn.Conv2d's default init distribution)."""

    def __init__(self, c_in, c_out, generator):
        super().__init__()
        bound = c_in**-0.5
        self.register_buffer("weight", (torch.rand(c_out, c_in, 1, 1, generator=generator) * 2 - 1) * bound)
        self.register_buffer("bias", (torch.rand(c_out, generator=generator) * 2 - 1) * bound)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


class RandomProjection(nn.Module):
    """Projected GAN's F_RandomProj (cout, expand=True): fixed random cross-channel mixing (CCM, 1x1 convs to
    cout * (1, 2, 4, 8)), then cross-scale mixing (CSM, FeatureFusionBlock) from the coarsest scale up: add the CCM
    map of that scale, upsample x2 (bilinear, align_corners=True), 1x1 conv halving the channels (not at the finest).
    Outputs: cout * (1, 1, 2, 4) channels at twice the input resolutions."""

    def __init__(self, channels, cout=64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = [cout * 2**i for i in range(len(channels))]
        self.channels = [widths[0], *(w // 2 for w in widths[1:])]
        self.ccm = nn.ModuleList(FixedConv1x1(a, b, g) for a, b in zip(channels, widths))
        self.csm = nn.ModuleList(FixedConv1x1(a, b, g) for a, b in zip(widths, self.channels))

    def forward(self, features):
        mixed = [ccm(f) for ccm, f in zip(self.ccm, features)]
        out, h = [None] * len(mixed), None
        for i in reversed(range(len(mixed))):
            h = mixed[i] if h is None else h + mixed[i]
            h = self.csm[i](F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True))
            out[i] = h
        return out


class DownBlock(nn.Sequential):
    """Projected GAN's DownBlock: spectrally normalised 4x4 stride-2 conv (with bias), BatchNorm, LeakyReLU(0.2)."""

    def __init__(self, c_in, c_out):
        super().__init__(spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2))


class PatchHead(nn.Module):
    """Projected GAN's SingleDisc (unconditional): DownBlocks from the map's size (snapped to the nearest key of
    HEAD_WIDTHS) down to 8, then a spectrally normalised 4x4 conv without bias to a map of logits."""

    def __init__(self, channels, resolution, end_resolution=8):
        super().__init__()
        size = min(HEAD_WIDTHS, key=lambda k: abs(k - resolution))  # first nearest key, as SingleDisc's argmin
        widths = {**HEAD_WIDTHS, size: channels}
        layers, out_size = [], resolution
        while size > end_resolution:
            layers.append(DownBlock(widths[size], widths[size // 2]))
            size, out_size = size // 2, out_size // 2
        if out_size < 4:
            raise ValueError(f"a {resolution}-pixel feature map is too small for a discriminator head: after "
                             f"{len(layers)} DownBlocks it has {out_size} pixels, under its final 4x4 conv. Raise "
                             "the feature network's resolution.")
        # maps under 8 pixels (tiny network only; the official code has none) keep their channels up to the last conv
        layers.append(spectral_norm(nn.Conv2d(widths[size], 1, 4, bias=False)))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(1)


class ProjectedDiscriminator(nn.Module):
    """forward(x in [-1, 1]) -> (B, L) unconditional patch logits: per feature network, its 4 heads from the finest
    scale, each flattened, concatenated along dim 1 (MultiScaleD); then the networks in order. The official loss
    averages the logits over all of them, so the order does not matter to it.

    In training mode each feature network sees its own DiffAugment draw of x, as in StyleGAN-XL.
    """

    def __init__(self, feature_networks, diffaug_policy="color,translation,cutout", cout=64, seed=0):
        super().__init__()
        self.feature_networks = nn.ModuleList(feature_networks)
        self.projections = nn.ModuleList(
            RandomProjection(net.channels, cout, seed + i) for i, net in enumerate(self.feature_networks)
        )
        self.heads = nn.ModuleList()
        for net, projection in zip(self.feature_networks, self.projections):
            with torch.no_grad():
                x = torch.zeros(1, net.img_channels, net.resolution, net.resolution)
                sizes = [f.shape[-1] for f in net(x)]
            if any(a != 2 * b for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"{type(net).__name__} gives {sizes}-pixel maps at {net.resolution} pixels, but "
                                 "cross-scale mixing needs each map exactly twice the next: use a resolution "
                                 "divisible by 16.")
            # CSM upsamples x2: the heads see maps twice the feature network's (112, 56, 28, 14 at 224 pixels)
            self.heads.append(nn.ModuleList(PatchHead(c, 2 * r) for c, r in zip(projection.channels, sizes)))
        self.diffaug_policy = diffaug_policy

    def forward(self, x):
        logits = []
        for net, projection, heads in zip(self.feature_networks, self.projections, self.heads):
            x_aug = diff_augment(x, self.diffaug_policy) if self.training else x
            logits += [head(f) for head, f in zip(heads, projection(net(x_aug)))]
        return torch.cat(logits, dim=1)


class PixelDiscriminator(nn.Module):
    """forward(x in [-1, 1]) -> (B, L) patch logits of a small trainable discriminator on the images themselves, for
    images too small for ImageNet feature networks (the 8x8 digits): an SN-conv 3x3, then SN-conv 4x4 stride-2 stages
    down to 4x4 pixels, then an SN-conv 3x3 to a map of logits. Its features are learned, so it grades the student
    on nothing fixed (least of all the evaluation's feature network). DiffAugment in training, as the projected one.

    It reads images clamped to [-1, 1], as the sampler outputs them and as the real data lie: a digits student's
    x_est overshoots the range (a quarter of its pixels fall below −1), and unclamped those pixels keep D from
    learning (held-out accuracy 0.5 against 0.9 clamped, official DiffAugment; docs/benchmarks.md).
    """

    def __init__(self, img_channels, resolution, widths=(32, 64), diffaug_policy="color,translation,cutout", seed=0):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"the pixel discriminator reads square images of a power-of-two size >= 8, got {resolution}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = [spectral_norm(nn.Conv2d(img_channels, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
            c = widths[0]
            for i in range(int(math.log2(resolution // 4))):
                width = widths[min(i + 1, len(widths) - 1)]
                layers += [spectral_norm(nn.Conv2d(c, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
                c = width
            layers.append(spectral_norm(nn.Conv2d(c, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)
        self.resolution, self.diffaug_policy = resolution, diffaug_policy

    def forward(self, x):
        if x.shape[-1] != self.resolution:
            raise ValueError(f"this pixel discriminator reads {self.resolution}-pixel images, got {x.shape[-1]}")
        x = x.clamp(-1, 1)
        return self.net(diff_augment(x, self.diffaug_policy) if self.training else x).flatten(1)


def build_discriminator(kind="tiny", img_channels=3, weights_paths=None, cout=64, tiny_resolution=32,
                        diffaug_policy="color,translation,cutout", img_resolution=None):
    """kind: 'pixels' (PixelDiscriminator on img_resolution-pixel images), or '+'-separated feature networks of the
    projected discriminator (4 heads each): 'tiny', 'digits_cnn' (a CNN trained on the digits, ctm/digits_cnn.py),
    the official pair
    'tf_efficientnet_lite0+deit_base_distilled_patch16_224' (timm), or torchvision's 'efficientnet_b0+vit_b_16'.

    weights_paths maps each pretrained network's name to its local weights file.
    """
    if kind == "pixels":
        if img_resolution is None:
            raise ValueError("the 'pixels' discriminator needs img_resolution, the size of the images it reads")
        return PixelDiscriminator(img_channels, img_resolution, diffaug_policy=diffaug_policy)
    weights_paths = weights_paths or {}
    networks = []
    for name in kind.split("+"):
        if name == "tiny":
            networks.append(TinyFeatureNetwork(img_channels, resolution=tiny_resolution))
        elif name == "digits_cnn":
            if img_channels != 1:
                raise ValueError(f"the 'digits_cnn' feature network reads grey digits, not {img_channels}-channel images")
            from ctm.digits_cnn import digits_feature_network  # it builds on this module's TinyFeatureNetwork
            networks.append(digits_feature_network())
        elif name in TIMM_WEIGHTS:
            networks.append(TimmFeatureNetwork(name, weights_paths.get(name)))
        elif name in TORCHVISION_WEIGHT_FILES:
            networks.append(TorchvisionFeatureNetwork(name, weights_paths.get(name)))
        else:
            choices = [*BUILT_IN, *TIMM_WEIGHTS, *TORCHVISION_WEIGHT_FILES]
            raise ValueError(f"unknown feature network '{name}' in kind '{kind}': pick from {choices} ('pixels' alone)")
    return ProjectedDiscriminator(networks, diffaug_policy, cout)
