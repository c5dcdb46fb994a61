"""`python -m jaxnum.data generate ...`: the `jaxnum generate` command on its own."""

import argparse
import sys

from ._cli import add_generate_parser, run_generate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxnum.data")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    return run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
