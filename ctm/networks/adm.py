"""OpenAI's ADM U-Net (`UNetModel` of openai/consistency_models `cm/unet.py`), key for key, with CTM's optional s-path.

Its state dict is that of the consistency-models release (e.g. `edm_imagenet64_ema.pt`, the teacher of the official
CTM ImageNet-64 code): `time_embed.*`, `label_emb.*`, `input_blocks.*`, `middle_block.*`, `output_blocks.*`, `out.*`.
Scale-shift norm and residual up/down blocks are always on, as in every released ImageNet-64 network.

- Attention is consistency_models' (and sony/ctm's, after its PR #6): a 1x1 Conv2d `qkv` whose 3C output channels
  are laid out (three, heads, head_dim), softmax(q·k/√d)·v. guided-diffusion's ADM differs (Conv1d weights (3C, C, 1),
  a (heads, three, head_dim) layout), so its checkpoints do not load here.
- With `s_path=True` (Kim et al. 2024, docs/method.md §1, ImageNet; sony/ctm `cm/unet.py`) the target time s gets its own
  MLP `time_embed_s` (the class label stays on the t path) and every ResBlock adds `emb_layers_s(emb_s)` to
  `emb_layers(emb_t)` before the scale-shift norm. With `s_path=False` the state dict is exactly OpenAI's.
- Weights stay fp32 and are cast to the input dtype (EDM's `use_fp16`); as in ADM's fp16 mode the embeddings, group
  norms and the output layer run in fp32.
"""

import math

import torch

from .layers import Conv2d, Linear, check_s_labels

# PyTorch's default Linear/Conv init (what ADM uses): U(±1/√fan_in) for weights and biases; ADM zeroes the last conv
# of each ResBlock, each attention's proj_out and the output conv.
INIT = dict(init_mode='kaiming_uniform', init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
INIT_ZERO = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)


def timestep_embedding(noise_labels, dim, max_period=10000):
    """ADM's sinusoidal embedding [cos, sin] with frequencies exp(−ln(max_period)·i/(dim/2)), in fp32."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=noise_labels.device)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = noise_labels.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class GroupNorm32(torch.nn.Module):
    """ADM's `normalization`: 32 groups, eps 1e-5, computed in fp32 and returned in the input dtype."""

    def __init__(self, num_channels):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x.float(), 32, self.weight.float(), self.bias.float(), 1e-5).to(x.dtype)


class LabelEmbedding(torch.nn.Module):
    """ADM's `label_emb` (an nn.Embedding, N(0, 1) init) applied to one-hot rows: onehot @ weight."""

    def __init__(self, num_classes, emb_channels):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(num_classes, emb_channels))

    def forward(self, class_labels):
        return class_labels.float() @ self.weight.float()


class ResBlock(torch.nn.Module):
    """ADM's ResBlock with scale-shift norm; `resample`: 'down' (2x2 average pool) or 'up' (nearest neighbour)."""

    def __init__(self, in_channels, out_channels, emb_channels, dropout, resample=None, s_path=False):
        super().__init__()
        self.resample = resample
        self.in_layers = torch.nn.Sequential(GroupNorm32(in_channels), torch.nn.SiLU(),
                                             Conv2d(in_channels, out_channels, kernel=3, **INIT))
        self.emb_layers = torch.nn.Sequential(torch.nn.SiLU(), Linear(emb_channels, 2 * out_channels, **INIT))
        if s_path:
            self.emb_layers_s = torch.nn.Sequential(torch.nn.SiLU(), Linear(emb_channels, 2 * out_channels, **INIT))
        self.out_layers = torch.nn.Sequential(GroupNorm32(out_channels), torch.nn.SiLU(), torch.nn.Dropout(dropout),
                                              Conv2d(out_channels, out_channels, kernel=3, **INIT_ZERO))
        self.skip_connection = (torch.nn.Identity() if out_channels == in_channels else
                                Conv2d(in_channels, out_channels, kernel=1, **INIT))

    def _resample(self, x):
        if self.resample == 'down':
            return torch.nn.functional.avg_pool2d(x, 2)
        if self.resample == 'up':
            return torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
        return x

    def forward(self, x, emb, emb_s=None):
        h = self._resample(self.in_layers[:2](x))  # up/down blocks resample between the activation and the conv
        h = self.in_layers[2](h)
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)
        if emb_s is not None:
            emb_out = emb_out + self.emb_layers_s(emb_s).to(h.dtype)
        scale, shift = emb_out[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        return self.skip_connection(x) + self.out_layers[1:](h)


class AttentionBlock(torch.nn.Module):
    """ADM's self-attention over pixels as in consistency_models: qkv channels laid out (three, heads, head_dim)."""

    def __init__(self, channels, num_head_channels):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f'attention over {channels} channels cannot be split into heads of {num_head_channels}')
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = Conv2d(channels, 3 * channels, kernel=1, **INIT)
        self.proj_out = Conv2d(channels, channels, kernel=1, **INIT_ZERO)

    def forward(self, x, emb=None, emb_s=None):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(3, 4).unbind(1)  # each (B, heads, pixels, head_dim)
        h = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q·k/√head_dim)·v per head
        return x + self.proj_out(h.transpose(2, 3).reshape(B, C, H, W))


class TimestepSequential(torch.nn.Sequential):
    """ADM's `TimestepEmbedSequential`: passes the embeddings to the blocks that take them."""

    def forward(self, x, emb, emb_s=None):
        for layer in self:
            x = layer(x, emb, emb_s) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class ADMUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image resolution at input/output.
        in_channels,                    # Number of color channels at input.
        out_channels,                   # Number of color channels at output.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        model_channels=192,             # Base multiplier for the number of channels.
        channel_mult=(1, 2, 3, 4),      # Per-resolution multipliers for the number of channels.
        num_res_blocks=3,               # Number of residual blocks per resolution.
        attn_resolutions=(32, 16, 8),   # Resolutions with self-attention (ADM's attention_resolutions flag).
        num_head_channels=64,           # Channels per attention head.
        dropout=0.0,                    # Dropout probability inside the ResBlocks.
        s_path=False,                   # CTM: second embedding path for the target time s.
    ):
        widths = [model_channels * m for m in channel_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f'ADMUNet group-normalises in 32 groups: model_channels x channel_mult = {widths} must '
                             f'all be multiples of 32')
        super().__init__()
        self.model_channels = model_channels
        self.s_path = s_path
        emb_channels = 4 * model_channels

        def resblock(cin, cout, resample=None):
            return ResBlock(cin, cout, emb_channels, dropout, resample, s_path)

        def embedding_mlp():
            return torch.nn.Sequential(Linear(model_channels, emb_channels, **INIT), torch.nn.SiLU(),
                                       Linear(emb_channels, emb_channels, **INIT))

        # Embeddings.
        self.time_embed = embedding_mlp()
        if s_path:
            self.time_embed_s = embedding_mlp()
        self.label_emb = LabelEmbedding(label_dim, emb_channels) if label_dim else None

        # Encoder.
        ch = widths[0]
        self.input_blocks = torch.nn.ModuleList([TimestepSequential(Conv2d(in_channels, ch, kernel=3, **INIT))])
        skips = [ch]
        for level, width in enumerate(widths):
            res = img_resolution >> level
            for _ in range(num_res_blocks):
                layers = [resblock(ch, width)]
                ch = width
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                self.input_blocks.append(TimestepSequential(resblock(ch, ch, 'down')))
                skips.append(ch)

        self.middle_block = TimestepSequential(resblock(ch, ch), AttentionBlock(ch, num_head_channels),
                                               resblock(ch, ch))

        # Decoder.
        self.output_blocks = torch.nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skips.pop(), width)]
                ch = width
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, 'up'))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = torch.nn.Sequential(GroupNorm32(ch), torch.nn.SiLU(),
                                       Conv2d(ch, out_channels, kernel=3, **INIT_ZERO))

    def forward(self, x, noise_labels, class_labels, noise_labels_s=None):
        check_s_labels(self, noise_labels_s)
        emb = self.time_embed(timestep_embedding(noise_labels, self.model_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(class_labels)
        emb_s = self.time_embed_s(timestep_embedding(noise_labels_s, self.model_channels)) if self.s_path else None

        skips = []
        for block in self.input_blocks:
            x = block(x, emb, emb_s)
            skips.append(x)
        x = self.middle_block(x, emb, emb_s)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb, emb_s)
        return self.out(x.float())
