"""Song et al.'s DDPM++ / NCSN++ U-Net as in EDM (`SongUNet`), with CTM's optional s-path.

With `s_path=True` the target time s (Kim et al. 2024, docs/method.md §1, CIFAR) goes through the same `map_noise` and
sin/cos swap as t, gets the same class embedding, then its own MLP `map_layer0_s`/`map_layer1_s`; every UNetBlock
adds `affine_s(emb_s)` to `affine(emb_t)`. With `s_path=False` the state dict is exactly EDM's.
"""

import numpy as np
import torch
from torch.nn.functional import silu

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock, check_s_labels

EMBEDDING_TYPES = ('positional', 'fourier')
ENCODER_TYPES = ('standard', 'skip', 'residual')
DECODER_TYPES = ('standard', 'skip')


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'{name}={value!r} is not supported; choose one of {choices}')


class SongUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image resolution at input/output.
        in_channels,                    # Number of color channels at input.
        out_channels,                   # Number of color channels at output.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        augment_dim=0,                  # Augmentation label dimensionality, 0 = no augmentation.
        model_channels=128,             # Base multiplier for the number of channels.
        channel_mult=(1, 2, 2, 2),      # Per-resolution multipliers for the number of channels.
        channel_mult_emb=4,             # Multiplier for the dimensionality of the embedding vector.
        num_blocks=4,                   # Number of residual blocks per resolution.
        attn_resolutions=(16,),         # List of resolutions with self-attention.
        dropout=0.10,                   # Dropout probability of intermediate activations.
        label_dropout=0,                # Dropout probability of class labels for classifier-free guidance.
        embedding_type='positional',    # Timestep embedding type: 'positional' for DDPM++, 'fourier' for NCSN++.
        channel_mult_noise=1,           # Timestep embedding size: 1 for DDPM++, 2 for NCSN++.
        encoder_type='standard',        # Encoder architecture: 'standard' for DDPM++, 'residual' for NCSN++.
        decoder_type='standard',        # Decoder architecture: 'standard' for both DDPM++ and NCSN++.
        resample_filter=(1, 1),         # Resampling filter: [1,1] for DDPM++, [1,3,3,1] for NCSN++.
        s_path=False,                   # CTM: second embedding path for the target time s.
    ):
        check_choice('embedding_type', embedding_type, EMBEDDING_TYPES)
        check_choice('encoder_type', encoder_type, ENCODER_TYPES)
        check_choice('decoder_type', decoder_type, DECODER_TYPES)
        super().__init__()
        self.label_dropout = label_dropout
        self.s_path = s_path
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn, s_path=s_path,
        )

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True) if embedding_type == 'positional' else FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        if s_path:
            self.map_layer0_s = Linear(in_features=noise_channels, out_features=emb_channels, **init)
            self.map_layer1_s = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(in_channels=caux, out_channels=cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin = cout
                cout = model_channels * mult
                attn = (res in attn_resolutions)
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=attn, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

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
                attn = (idx == num_blocks and res in attn_resolutions)
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def embed_noise(self, noise_labels):
        emb = self.map_noise(noise_labels)
        return emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos

    def forward(self, x, noise_labels, class_labels, augment_labels=None, noise_labels_s=None):
        check_s_labels(self, noise_labels_s)

        # Mapping.
        emb = self.embed_noise(noise_labels)
        label = None
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
            label = self.map_label(tmp * np.sqrt(self.map_label.in_features))
            emb = emb + label
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))
        emb_s = None
        if self.s_path:
            emb_s = self.embed_noise(noise_labels_s)
            if label is not None:
                emb_s = emb_s + label
            emb_s = silu(self.map_layer0_s(emb_s))
            emb_s = silu(self.map_layer1_s(emb_s))

        # Encoder.
        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb, emb_s) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder.
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb, emb_s)
        return aux
