"""Dhariwal & Nichol's ADM U-Net as in EDM (`DhariwalUNet`), with CTM's optional s-path.

With `s_path=True` the target time s (Kim et al. 2024, docs/method.md §1, ImageNet) goes through `map_noise` and its own
MLP, emb_s = silu(map_layer1_s(silu(map_layer0_s(pos(s))))), with the class label on the t path only; every
UNetBlock adds `affine_s(emb_s)` to `affine(emb_t)` before the scale-shift norm. With `s_path=False` the state dict is
exactly EDM's.
"""

import numpy as np
import torch
from torch.nn.functional import silu

from .layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock, check_s_labels


class DhariwalUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image resolution at input/output.
        in_channels,                    # Number of color channels at input.
        out_channels,                   # Number of color channels at output.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        augment_dim=0,                  # Augmentation label dimensionality, 0 = no augmentation.
        model_channels=192,             # Base multiplier for the number of channels.
        channel_mult=(1, 2, 3, 4),      # Per-resolution multipliers for the number of channels.
        channel_mult_emb=4,             # Multiplier for the dimensionality of the embedding vector.
        num_blocks=3,                   # Number of residual blocks per resolution.
        attn_resolutions=(32, 16, 8),   # List of resolutions with self-attention.
        dropout=0.10,                   # Dropout probability of intermediate activations.
        label_dropout=0,                # Dropout probability of class labels for classifier-free guidance.
        s_path=False,                   # CTM: second embedding path for the target time s.
    ):
        super().__init__()
        self.label_dropout = label_dropout
        self.s_path = s_path
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero, s_path=s_path)

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, init_mode='kaiming_normal', init_weight=np.sqrt(augment_dim)) if augment_dim else None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False, init_mode='kaiming_normal', init_weight=np.sqrt(label_dim)) if label_dim else None
        if s_path:
            self.map_layer0_s = Linear(in_features=model_channels, out_features=emb_channels, **init)
            self.map_layer1_s = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin = cout
                cout = model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None, noise_labels_s=None):
        check_s_labels(self, noise_labels_s)

        # Mapping.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
            emb = emb + self.map_label(tmp)
        emb = silu(emb)
        emb_s = None
        if self.s_path:
            emb_s = silu(self.map_layer0_s(self.map_noise(noise_labels_s)))
            emb_s = silu(self.map_layer1_s(emb_s))

        # Encoder.
        skips = []
        for block in self.enc.values():
            x = block(x, emb, emb_s) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        # Decoder.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, emb_s)
        return self.out_conv(silu(self.out_norm(x)))
