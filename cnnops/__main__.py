"""python -m cnnops SUB-COMMAND: check | bench | train (each has --help)."""
import argparse
import importlib
import sys

SUBCOMMANDS = ("check", "bench", "train")


def _summary(name: str) -> str:
    try:
        doc = importlib.import_module(f"cnnops.{name}").__doc__ or ""
    except ImportError as e:
        return f"(unavailable: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m cnnops", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="SUB-COMMAND")
    # Only the chosen sub-command's module is imported (train pulls in matplotlib, bench
    # the catalogue); the others are listed by their docstring's first line.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name in SUBCOMMANDS:
        if name == chosen:
            module = importlib.import_module(f"cnnops.{name}")
            sub = subparsers.add_parser(name, help=_summary(name), description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
            module.configure(sub)
            sub.set_defaults(run=module.run)
        else:
            subparsers.add_parser(name, help=_summary(name))
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
