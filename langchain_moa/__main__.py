"""``python -m langchain_moa "question"``: the ``moa`` command."""

import sys

from langchain_moa.cli import main

sys.exit(main())
