"""``remixcrm-ctct``: the admin's command line (also ``python -m remixcrm_plugin_ctct``)."""

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remixcrm-ctct",
        description="Constant Contact plugin for RemixCRM: try it, check it, operate it.",
    )
    parser.add_argument("--version", action="version", version=f"remixcrm-plugin-ctct {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run the whole path on a built-in Constant Contact sandbox (no account, no config needed)",
        description="Start a local Constant Contact sandbox, load the plugin through its entry point, "
        "fire the hooks for sample clients and show what arrived. Never touches your real config.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.run()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
