"""The `dltips` command line."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Sequence, TextIO

from dltips.catalog import THEME_TITLES, THEMES, TIPS, Tip, tips_by_theme


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dltips", description="Deep-learning training heuristics, as checks and parts.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands")
    tips = commands.add_parser("tips", help="list the tips, or show one in full")
    tips.add_argument("id", nargs="?", help="a tip id, e.g. one-cycle")
    tips.add_argument("--theme", choices=THEMES, help="only the tips of this theme")
    tips.set_defaults(command="tips", run=_run_tips)
    return parser


def _run_tips(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    if args.id is not None:
        if args.id not in TIPS:
            print(f"dltips: unknown tip {args.id!r}. Valid ids:\n  " + "\n  ".join(TIPS), file=sys.stderr)
            return 2
        out.write(format_tip(TIPS[args.id]))
        return 0
    theme = None
    for tip in tips_by_theme(args.theme):
        if tip.theme != theme:
            theme = tip.theme
            out.write(f"\n{THEME_TITLES[theme]}\n")
        status = "" if tip.implemented_by else "  (to come)"
        out.write(f"  {tip.id:<30} {tip.kind:<12} {tip.title}{status}\n")
    out.write("\n`dltips tips ID` shows one tip in full.\n")
    return 0


def format_tip(tip: Tip) -> str:
    """One tip in full, as `dltips tips ID` prints it."""
    lines = [f"{tip.id}: {tip.title}", f"theme: {THEME_TITLES[tip.theme]}    kind: {tip.kind}", ""]
    lines += textwrap.wrap(tip.advice, width=88)
    lines.append("")
    if tip.implemented_by:
        lines.append("in dltips: " + ", ".join(tip.implemented_by))
    else:
        lines.append("in dltips: not implemented yet in this version.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
