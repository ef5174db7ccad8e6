"""``python -m harmonix``: the command-line interface.

Also the way to run ``harmonix fit`` on several processes: ``torchrun --nproc_per_node=2 -m
harmonix fit --method iguane ...``.
"""

import sys

from harmonix.cli import main

if __name__ == "__main__":
    sys.exit(main())
