"""Evaluation: FID through clean-fid on Ray actors, the schedule sweep, NLL, results reused across runs, the report."""

from .actors import Evaluator, EvaluatorPool
from .features import FeatureSet, build_features
from .fid import Reference, build_reference, cleanfid_features, fid
from .models import ExactFlowMap, Model
from .report import write_report
from .reuse import score_with_reuse
from .schedule_sweep import schedule_sweep_settings, write_schedule_sweep_report
from .settings import Setting, gamma_settings, two_step_settings

__all__ = ["Evaluator", "EvaluatorPool", "FeatureSet", "build_features", "Reference", "build_reference",
           "cleanfid_features", "fid", "ExactFlowMap", "Model", "write_report", "score_with_reuse",
           "schedule_sweep_settings", "write_schedule_sweep_report", "Setting", "gamma_settings", "two_step_settings"]
