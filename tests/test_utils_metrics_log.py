import json
import math

from backbones.utils.metrics_log import MetricsLogger, read_metrics


def test_log_read_and_resume_truncation(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True)
    for it in (10, 20, 30):
        logger.log(it, lr=0.1, loss=1.0 / it, train_err=50.0)
    logger.log(30, **{"eval/top1_err": 12.5, "eval/top5_err": float("nan")})
    logger.close()
    records = read_metrics(tmp_path)
    assert [r["iter"] for r in records] == [10, 20, 30, 30]
    assert records[-1] == {"iter": 30, "eval/top1_err": 12.5, "eval/top5_err": None}
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())

    # A crash leaves a partial line; the resumed run (from iteration 20) drops it and everything after 20.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iter": 40, "lo')
    assert [r["iter"] for r in read_metrics(tmp_path)] == [10, 20, 30, 30]
    resumed = MetricsLogger(tmp_path, tensorboard=False)
    resumed.resume_at(20)
    resumed.log(30, lr=0.01)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [10, 20, 30]
    assert json.loads(lines[-1])["lr"] == 0.01


def test_resume_can_drop_records_at_the_resume_iteration(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(5, loss=1.0)
    logger.log(5, **{"eval/top1_err": 3.0})
    logger.resume_at(5, keep_at=lambda r: "eval/top1_err" not in r)
    assert read_metrics(tmp_path) == [{"iter": 5, "loss": 1.0}]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "run", enabled=False)
    logger.log(1, loss=math.pi)
    logger.resume_at(0)
    assert not (tmp_path / "run").exists()
