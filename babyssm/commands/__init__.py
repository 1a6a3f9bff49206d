"""The ``babyssm`` command line: the only place with argparse (one module per command group)."""
