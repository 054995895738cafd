"""Command line: `cuconv` (also `python -m cuconv`).

    cuconv train --model lenet-bn --data-dir DIR --out runs/lenet-bn
    cuconv info                 # build, torch, GPU and the CPU kernels chosen: paste into bug reports
    cuconv --version
"""

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `cuconv train: error: --epochs must be ... (got 0)`, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    from . import train

    parser = ArgumentParser(prog="cuconv", description="cuconv command line")
    parser.add_argument("--version", action="store_true", help="print cuconv's and torch's versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    train_parser = commands.add_parser(
        "train", help="train LeNet, VGG or ResNet-18 on cuconv and/or torch.nn layers and compare",
        description=train.__doc__.split("\n\n")[0])
    train.build_parser(train_parser)
    info_parser = commands.add_parser("info", help="the build, torch, GPUs and the CPU kernels cuconv chooses",
                                      description="What this cuconv is and which kernels it runs.")
    info_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.version:
        import torch

        import cuconv

        print(f"cuconv {cuconv.__version__} (torch {torch.__version__}, built against {cuconv.built_with_torch})")
        return 0
    if args.command == "train":
        train.check_args(train_parser, args)
        return train.main_with_args(args)
    if args.command == "info":
        from . import info

        try:
            report = info.collect()
        except ValueError as error:  # a bad CUCONV_* setting (the kernels would refuse it too)
            info_parser.exit(2, f"{info_parser.prog}: error: {error}\n")
        if args.json:
            import json

            print(json.dumps(report, indent=2))
        else:
            print(info.format_report(report))
        return 0
    parser.error("a command is required: train or info")


if __name__ == "__main__":
    sys.exit(main())
