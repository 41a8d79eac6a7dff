"""One module per ``binforge`` subcommand: ``add_parser(subparsers)`` sets ``run``."""
