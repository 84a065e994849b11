"""Classification pretraining: the paper's ImageNet and CIFAR-10 recipes, digits for CPU-scale reproduction."""
from .defaults import PRETRAIN_DEFAULTS, default_config_path, paper_dataset, validate
from .evaluation import evaluate
from .model_io import build_classifier, load_classifier
from .trainer import Trainer

__all__ = ["PRETRAIN_DEFAULTS", "default_config_path", "paper_dataset", "validate", "evaluate", "build_classifier",
           "load_classifier", "Trainer"]
