"""The digits degradation experiment on a shortened schedule (the full one is in docs/PRETRAINING.md)."""
import pytest

from backbones.pretrain import PRETRAIN_DEFAULTS, Trainer
from backbones.utils.config import load_config
from test_pretrain_fixtures import REPO, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
def test_deep_plain_net_degrades_and_residual_net_does_not(tmp_path):
    short = ["solver.max_iter=300", "solver.steps=[200]", "train.eval_period=0", "train.checkpoint_period=300",
             "train.progress=false", "train.log_period=50"]
    train_err = {}
    for arch in ("plain20", "plain56", "resnet20", "resnet56"):
        cfg = load_config(PRETRAIN_DEFAULTS, str(REPO / f"configs/pretrain/digits_{arch}.yaml"), short)
        train_err[arch] = Trainer(cfg, tmp_path / arch).run()["train_err"]
    assert train_err["plain56"] > train_err["plain20"] + 10, train_err  # degradation
    assert train_err["resnet56"] < train_err["plain56"] - 10, train_err  # residual learning removes it
    assert train_err["resnet56"] <= train_err["resnet20"] + 0.5, train_err  # depth does not hurt a ResNet
