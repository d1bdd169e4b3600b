"""``python -m search`` is the ``finetune-search`` command."""

import sys

from search.cli import main

sys.exit(main())
