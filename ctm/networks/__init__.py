"""EDM-compatible networks (NVlabs/edm `training/networks.py`): DDPM++/NCSN++ `SongUNet`, ADM `DhariwalUNet`, `EDMPrecond`;
OpenAI's ADM `UNetModel` as `ADMUNet` (openai/consistency_models `cm/unet.py`)."""

from .adm import ADMUNet
from .dhariwalunet import DhariwalUNet
from .precond import EDMPrecond, build_edm_network, edm_scalings, fast_inference, tiny_songunet_kwargs
from .songunet import SongUNet

__all__ = ['ADMUNet', 'DhariwalUNet', 'EDMPrecond', 'SongUNet', 'build_edm_network', 'edm_scalings', 'fast_inference', 'tiny_songunet_kwargs']
