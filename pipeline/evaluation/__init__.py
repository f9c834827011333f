"""Evaluation: FID through clean-fid on Ray actors, sampling-schedule sweeps, NLL, and the report."""

from .actors import Evaluator, EvaluatorPool
from .features import FeatureSet, build_features
from .fid import Reference, build_reference, cleanfid_features, fid
from .gamma_sweep import run_gamma_sweep, sweep_settings, write_sweep_report
from .models import ExactFlowMap, Model
from .report import write_report
from .settings import Setting, gamma_settings, two_step_settings

__all__ = ["Evaluator", "EvaluatorPool", "FeatureSet", "build_features", "Reference", "build_reference",
           "cleanfid_features", "fid", "run_gamma_sweep", "sweep_settings", "write_sweep_report", "ExactFlowMap",
           "Model", "write_report", "Setting", "gamma_settings", "two_step_settings"]
