#!/usr/bin/env python
"""Score detections: a model checkpoint on a dataset, or existing results files without a model.

  # COCO results JSON ([{image_id, category_id, bbox: [x, y, w, h], score}]) against COCO ground truth
  python tools/eval_det.py --results dets.json --gt annotations/instances_val2017.json --output-dir OUT
  # PASCAL VOC devkit files (comp4_det_test_<class>.txt) against VOCdevkit/VOC2007 Annotations + ImageSets
  python tools/eval_det.py --results RUN/eval/voc_results --voc-root VOCdevkit/VOC2007 --split test --output-dir OUT
  # a trained model (detection.engine.evaluate.evaluate_checkpoint), on its own test split or another one
  python tools/eval_det.py --weights RUN/model_final.pth --output-dir OUT
  python tools/eval_det.py --weights RUN/model_final.pth --dataset coco_json --ann val.json --images val/ -o OUT

Writes OUT/eval/metrics.json and OUT/eval/pr_curves.json, prints the summary, and renders OUT/report/ (unless
--no-report). See docs/EVALUATION.md.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from detection.evaluation.coco import check_results, load_coco_ground_truth, score_coco_results  # noqa: E402
from detection.evaluation.outputs import format_metrics, write_metrics_sections  # noqa: E402
from detection.evaluation.voc import score_voc  # noqa: E402
from detection.evaluation.voc_files import comp4_path, load_voc_ground_truth, read_comp4  # noqa: E402
from detection.model.inference import add_inference_arguments, inference_overrides  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=add_help)
    scoring = parser.add_argument_group("score existing results (no model)")
    scoring.add_argument("--results",
                         help="COCO results JSON file, or a folder of devkit comp4_det_<split>_<class>.txt files")
    scoring.add_argument("--gt", help="COCO ground-truth JSON (with --results FILE)")
    scoring.add_argument("--voc-root", help="VOCdevkit/VOC<year> folder (with --results DIR)")
    scoring.add_argument("--split", help="VOC image set, ImageSets/Main/<split>.txt (default: test); model mode: "
                                         "the test split name (default: the dataset's standard test split)")
    scoring.add_argument("--classes", help="comma-separated VOC class names (default: the 20 PASCAL VOC classes)")
    scoring.add_argument("--pycocotools", action="store_true",
                         help="COCO: score with pycocotools itself (same numbers, slower)")
    model = parser.add_argument_group("evaluate a model")
    model.add_argument("--weights", help="detector file to evaluate (RUN/model_final.pth or a training checkpoint)")
    model.add_argument("--dataset", help="dataset as in tools/train_det.py (voc07, coco, coco_json, digits, ...); "
                                         "default: the one the model was trained on")
    model.add_argument("--data-root", help="datasets folder (default: $RESDET_DATASETS or ./datasets)")
    model.add_argument("--ann", help="coco_json: test annotation file")
    model.add_argument("--images", help="coco_json: test image folder")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_inference_arguments(model)
    add_threads_argument(parser)
    parser.add_argument("-o", "--output-dir", default="runs/eval_det",
                        help="writes OUTPUT_DIR/eval/{metrics,pr_curves}.json and OUTPUT_DIR/report/ "
                             "(default: runs/eval_det)")
    parser.add_argument("--no-report", action="store_true", help="skip rendering OUTPUT_DIR/report/")
    parser.add_argument("overrides", nargs="*", help="model mode: config overrides key=value")
    return parser


def score_coco_file(results_file: Path, gt_file: Path, use_fast: bool):
    if not gt_file.is_file():
        raise FileNotFoundError(f"--gt {gt_file}: file not found")
    try:
        results = json.loads(results_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{results_file}: not valid JSON ({e})") from None
    if not isinstance(results, list):
        raise ValueError(f"{results_file}: expected a JSON list of {{image_id, category_id, bbox, score}}, "
                         f"got {type(results).__name__}")
    coco_gt = load_coco_ground_truth(gt_file)
    check_results(coco_gt, results, source=str(results_file))
    section, curves = score_coco_results(coco_gt, results, use_fast=use_fast)
    return {"bbox": section}, {"bbox": curves}


def score_voc_folder(results_dir: Path, voc_root: Path, split: str, class_names):
    gt, image_names = load_voc_ground_truth(voc_root, split, class_names)
    name_to_id = {name: i for i, name in image_names.items()}
    missing = [str(comp4_path(results_dir, split, c)) for c in class_names
               if not comp4_path(results_dir, split, c).is_file()]
    if missing:
        raise FileNotFoundError(f"devkit results missing for {len(missing)} class(es): {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''} (write an empty file for a class without "
                                f"detections)")
    detections = [read_comp4(comp4_path(results_dir, split, c), name_to_id) for c in class_names]
    section, curves = score_voc(class_names, gt, detections, sorted(gt))
    return {"voc": section}, {"voc": curves}


def run_model_mode(args) -> None:
    from detection.engine.evaluate import evaluate_checkpoint

    # data.* config keys of the stored config that this evaluation changes
    given = {"dataset": args.dataset, "root": args.data_root, "test": args.split, "test_ann_file": args.ann,
             "test_image_dir": args.images}
    dataset_args = {k: v for k, v in given.items() if v is not None}
    eval_dir = Path(args.output_dir) / "eval"
    overrides = [*args.overrides, *inference_overrides(args.no_optimize, args.precision)]
    evaluate_checkpoint(args.weights, dataset_args, eval_dir, device=args.device, overrides=overrides,
                        retain_memory=True)  # this process only runs inference
    from backbones.utils.dist import is_main_process

    if is_main_process():  # provenance for the report
        write_metrics_sections(eval_dir, {}, {}, meta={"weights": str(args.weights), **dataset_args,
                                                       "overrides": overrides})


def main(args) -> int:
    set_threads(args.threads)
    out = Path(args.output_dir)
    if args.weights:
        if args.results:
            raise SystemExit("error: give either --weights (evaluate a model) or --results (score files), not both")
        run_model_mode(args)
        from backbones.utils.dist import is_main_process

        if not is_main_process():  # under torchrun, rank 0 reports
            return 0
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
    elif args.results:
        results = Path(args.results)
        if results.is_dir():
            if not args.voc_root:
                raise SystemExit("error: --results DIR (devkit files) needs --voc-root VOCdevkit/VOC<year>")
            if args.classes:
                class_names = [c.strip() for c in args.classes.split(",") if c.strip()]
            else:
                from detection.data.voc import VOC_CLASSES
                class_names = list(VOC_CLASSES)
            split = args.split or "test"
            metrics, curves = score_voc_folder(results, Path(args.voc_root), split, class_names)
            source = {"results": str(results), "voc_root": str(args.voc_root), "split": split}
        elif results.is_file():
            if not args.gt:
                raise SystemExit("error: --results FILE (COCO results JSON) needs --gt instances.json")
            metrics, curves = score_coco_file(results, Path(args.gt), use_fast=not args.pycocotools)
            source = {"results": str(results), "gt": str(args.gt)}
        else:
            raise SystemExit(f"error: --results {results}: no such file or folder")
        metrics = write_metrics_sections(out / "eval", metrics, curves, meta={"scored": source})
    else:
        raise SystemExit("error: nothing to do; give --results (with --gt or --voc-root) or --weights")
    print(format_metrics(metrics))
    print(f"wrote {out / 'eval' / 'metrics.json'}")
    if not args.no_report:
        from detection.reports import build_report

        md, html = build_report([out], out / "report")
        print(f"wrote {md} and {html}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except (OSError, KeyError, ValueError, CheckpointError) as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
