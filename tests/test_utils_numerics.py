import pytest
import torch

from backbones.utils.numerics import NanGuard, NonFiniteError, assert_finite_state, grads_finite


def _params(grad_value):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, grad_value, 1.0])
    return [p]


def test_stop_policy_names_iteration_and_checkpoint():
    guard = NanGuard("stop")
    assert guard.step_ok(5, torch.tensor(1.0), _params(0.5))
    with pytest.raises(NonFiniteError, match=r"non-finite loss at iteration 6 .*last good checkpoint: ck/model_4.pth"):
        guard.step_ok(6, torch.tensor(float("nan")), _params(0.5), "ck/model_4.pth")
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at iteration 7 .*none written yet") as info:
        guard.step_ok(7, torch.tensor(1.0), _params(float("inf")))
    assert info.value.iteration == 7


def test_skip_policy_skips_then_gives_up():
    guard = NanGuard("skip", max_consecutive_skips=2)
    assert not guard.step_ok(1, torch.tensor(float("inf")))
    assert guard.step_ok(2, torch.tensor(1.0))
    assert not guard.step_ok(3, torch.tensor(float("nan")))
    assert not guard.step_ok(4, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteError, match="iteration 5 .*max_consecutive_skips=2"):
        guard.step_ok(5, torch.tensor(float("nan")))
    assert guard.state_dict()["skipped_total"] == 3


def test_fp16_mode_leaves_inf_grads_to_the_scaler():
    assert NanGuard("stop", check_grads=False).step_ok(1, torch.tensor(1.0), _params(float("inf")))
    assert grads_finite(_params(1.0)) and not grads_finite(_params(float("nan")))


def test_bad_policy_and_non_finite_state():
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        NanGuard("ignore")
    assert_finite_state({"w": torch.ones(2), "n": torch.tensor(3)})
    with pytest.raises(NonFiniteError, match="'layer.w' holds NaN"):
        assert_finite_state({"layer.w": torch.tensor([1.0, float("nan")])})
