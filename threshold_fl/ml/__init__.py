"""Machine-learning glue: flat model vectors, encryption masks, sensitivity maps, local DP,
models, the digits and colour photo patches, local training, and gradient inversion.

Names are imported lazily: the mask and privacy code need only numpy, so the protocol
layer can use them without loading torch (which the rest needs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from threshold_fl.ml.attack import AttackConfig as AttackConfig
    from threshold_fl.ml.attack import Attacker as Attacker
    from threshold_fl.ml.attack import invert_gradient as invert_gradient
    from threshold_fl.ml.attack import victim_gradient as victim_gradient
    from threshold_fl.ml.data import ClientData as ClientData
    from threshold_fl.ml.data import Dataset as Dataset
    from threshold_fl.ml.data import load_digits as load_digits
    from threshold_fl.ml.data import split_dirichlet as split_dirichlet
    from threshold_fl.ml.data import split_iid as split_iid
    from threshold_fl.ml.flatten import ModelLayout as ModelLayout
    from threshold_fl.ml.flatten import TensorSpec as TensorSpec
    from threshold_fl.ml.flatten import flatten_state as flatten_state
    from threshold_fl.ml.flatten import layout_of as layout_of
    from threshold_fl.ml.flatten import restore_state as restore_state
    from threshold_fl.ml.flatten import vector_to_state_dict as vector_to_state_dict
    from threshold_fl.ml.image_metrics import ms_ssim as ms_ssim
    from threshold_fl.ml.image_metrics import mse as mse
    from threshold_fl.ml.image_metrics import psnr as psnr
    from threshold_fl.ml.image_metrics import ssim as ssim
    from threshold_fl.ml.image_metrics import uqi as uqi
    from threshold_fl.ml.image_metrics import vif as vif
    from threshold_fl.ml.learner import LocalLearner as LocalLearner
    from threshold_fl.ml.mask import EncryptionMask as EncryptionMask
    from threshold_fl.ml.mask import first_and_last_layers as first_and_last_layers
    from threshold_fl.ml.mask import select_random_fraction as select_random_fraction
    from threshold_fl.ml.mask import select_top_fraction as select_top_fraction
    from threshold_fl.ml.models import MODELS as MODELS
    from threshold_fl.ml.models import build_model as build_model
    from threshold_fl.ml.models import parameter_count as parameter_count
    from threshold_fl.ml.photos import load_photos as load_photos
    from threshold_fl.ml.privacy import LaplaceNoise as LaplaceNoise
    from threshold_fl.ml.privacy import PrivacyBudget as PrivacyBudget
    from threshold_fl.ml.privacy import privacy_budget as privacy_budget
    from threshold_fl.ml.sensitivity import sensitivity_map as sensitivity_map
    from threshold_fl.ml.training import Evaluation as Evaluation
    from threshold_fl.ml.training import LocalTraining as LocalTraining
    from threshold_fl.ml.training import evaluate as evaluate
    from threshold_fl.ml.training import train_local as train_local

_EXPORTS = {
    "attack": ("AttackConfig", "Attacker", "invert_gradient", "victim_gradient"),
    "data": ("ClientData", "Dataset", "load_digits", "split_dirichlet", "split_iid"),
    "flatten": ("ModelLayout", "TensorSpec", "flatten_state", "layout_of", "restore_state",
                "vector_to_state_dict"),
    "image_metrics": ("ms_ssim", "mse", "psnr", "ssim", "uqi", "vif"),
    "learner": ("LocalLearner",),
    "mask": ("EncryptionMask", "first_and_last_layers", "select_random_fraction",
             "select_top_fraction"),
    "models": ("MODELS", "build_model", "parameter_count"),
    "photos": ("load_photos",),
    "privacy": ("LaplaceNoise", "PrivacyBudget", "privacy_budget"),
    "sensitivity": ("sensitivity_map",),
    "training": ("Evaluation", "LocalTraining", "evaluate", "train_local"),
}
_HOMES = {name: home for home, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'threshold_fl.ml' has no attribute {name!r}")
    return getattr(importlib.import_module(f"threshold_fl.ml.{home}"), name)
