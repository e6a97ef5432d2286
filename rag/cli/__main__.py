"""``python -m rag.cli``: the ``specrag`` command without the console script."""

import sys

from rag.cli.main import main

sys.exit(main())
