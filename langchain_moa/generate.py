"""``python -m langchain_moa.generate``: the ``moa-generate`` command.

See ``langchain_moa.generation.cli`` for what it does.
"""

import sys

from langchain_moa.generation.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
