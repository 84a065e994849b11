"""Infrastructure shared by the pretraining and detection stages (config, atomic files, checkpoints)."""
