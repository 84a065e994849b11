#!/usr/bin/env python
"""Print parameters, multiply-adds and the C4 split of registered backbones (paper Table 1 complexity).

    python tools/model_info.py --arch resnet50 resnet101 --input-size 224
    python tools/model_info.py --arch all --json
"""
import argparse
import json
import sys

from backbones import build_backbone, build_c4, list_backbones
from backbones.complexity import ModelInfo, count_multiply_adds, count_params
from backbones.registry import get_spec


def model_info(arch: str, input_size: int, stride_in_1x1: bool = True) -> ModelInfo:
    kwargs = {"stride_in_1x1": stride_in_1x1}
    model = build_backbone(arch, **kwargs)
    c4 = build_c4(arch, **kwargs)
    return ModelInfo(
        arch=arch,
        input_size=input_size,
        params=count_params(model),
        multiply_adds=count_multiply_adds(model, (1, 3, input_size, input_size)),
        c4_stride=c4.stride,
        c4_channels=c4.out_channels,
        c4_head_channels=c4.head_channels,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                                      "vgg16"], help="registered names, or 'all'")
    parser.add_argument("--input-size", type=int, default=None,
                        help="square input side (default 224 for ImageNet nets, 32 for CIFAR nets)")
    parser.add_argument("--torchvision-layout", action="store_true",
                        help="stride on the bottleneck 3x3 (torchvision v1.5) instead of the paper's 1x1")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    archs = list_backbones() if args.arch == ["all"] else args.arch
    rows = []
    for arch in archs:
        try:
            family = get_spec(arch).family
        except KeyError as e:
            parser.error(str(e.args[0]))
        size = args.input_size or (32 if family == "cifar_resnet" else 224)
        rows.append(model_info(arch, size, stride_in_1x1=not args.torchvision_layout))
    if args.json:
        json.dump([r.as_dict() for r in rows], sys.stdout, indent=2)
        print()
        return 0
    header = f"{'arch':<11} {'input':>5} {'params':>13} {'mult-adds':>11} {'C4 stride':>9} {'C4 ch':>6} {'head ch':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.arch:<11} {r.input_size:>5} {r.params:>13,} {r.multiply_adds / 1e9:>9.3f} G "
              f"{r.c4_stride:>9} {r.c4_channels:>6} {r.c4_head_channels:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
