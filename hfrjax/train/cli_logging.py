"""Quiet defaults for the launch scripts: progress lines on stdout, warnings from libraries.

absl's default verbosity prints every INFO line of Orbax and grain, which buries the progress
lines; ``--verbosity=0`` (or higher) on the command line brings them back.
"""

from absl import flags, logging


def quiet_unless_asked() -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
