"""python -m cnnops SUB-COMMAND: check | bench | train | tune (each has --help)."""
import argparse
import importlib
import sys

SUBCOMMANDS = {
    "check": "compare every available backend with torch, forward and backward",
    "bench": "time the kernels against PyTorch on this machine: table, JSON, PNG chart",
    "train": "train a classic model (LeNet ... DenseNet) on Fashion-MNIST or bundled data",
    "tune": "time every backend on a model's layers; cache the fastest for backend=\"fastest\"",
}


def _load(name: str):
    """The sub-command's module, or None with the reason printed.

    A module that is missing (e.g. `tune` before it is written) or whose optional packages are
    not installed fails only its own sub-command, never --help or the others."""
    from cnnops.tools import EXTRA_PACKAGES, INSTALL_HINT

    try:
        return importlib.import_module(f"cnnops.tools.{name}")
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root in EXTRA_PACKAGES:
            print(f"python -m cnnops {name}: needs {EXTRA_PACKAGES[root]} (not "
                  f"installed): {INSTALL_HINT}", file=sys.stderr)
        elif e.name == f"cnnops.tools.{name}":
            print(f"python -m cnnops {name}: not available in this version "
                  f"(no module cnnops.tools.{name})", file=sys.stderr)
        else:
            raise
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m cnnops", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="SUB-COMMAND")
    # Only the chosen sub-command's module is imported (train pulls in tqdm and matplotlib).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, summary in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=summary)
        if name == chosen:
            module = _load(name)
            if module is None:
                return 2
            sub.description = module.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            module.configure(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    from cnnops.tools import MissingExtra

    try:
        return args.run(args)
    except MissingExtra as e:  # raised where an optional package is first needed
        print(f"python -m cnnops {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
