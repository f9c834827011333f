"""EDM-compatible networks (NVlabs/edm `training/networks.py`): DDPM++/NCSN++ `SongUNet`, ADM `DhariwalUNet`, `EDMPrecond`."""

from .dhariwalunet import DhariwalUNet
from .precond import EDMPrecond, build_edm_network, edm_scalings, fast_inference, tiny_songunet_kwargs
from .songunet import SongUNet

__all__ = ['DhariwalUNet', 'EDMPrecond', 'SongUNet', 'build_edm_network', 'edm_scalings', 'fast_inference', 'tiny_songunet_kwargs']
