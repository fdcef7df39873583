"""``python -m langchain_moa.server``: the same as ``moa serve``."""

import sys

from langchain_moa.server.cli import main

sys.exit(main())
