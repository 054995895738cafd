"""Command line: `python -m cuconv train ...` (also the `cuconv` console script).

    python -m cuconv train --model lenet --backend both --data-dir DIR --epochs 10 --out runs/lenet
    python -m cuconv train --help
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="cuconv", description="cuconv command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import train

    train_parser = commands.add_parser(
        "train", help="train LeNet, VGG or ResNet-18 on cuconv and/or torch.nn layers and compare",
        description=train.__doc__.split("\n\n")[0])
    train.build_parser(train_parser)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train.main_with_args(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
