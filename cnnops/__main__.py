"""python -m cnnops SUB-COMMAND: check | bench | train (each has --help)."""
import argparse
import importlib
import sys

SUBCOMMANDS = {
    "check": "compare every available backend with torch, forward and backward",
    "bench": "time the kernels against PyTorch on this machine: table, JSON, PNG chart",
    "train": "train a classic model (LeNet ... DenseNet) on Fashion-MNIST or bundled data",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m cnnops", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="SUB-COMMAND")
    # Only the chosen sub-command's module is imported (train pulls in matplotlib).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, summary in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=summary)
        if name == chosen:
            module = importlib.import_module(f"cnnops.tools.{name}")
            sub.description = module.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            module.configure(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
