"""Run the OpenAI simulator: ``python -m langchain_moa.testing --help``."""

from langchain_moa.testing.server import main

raise SystemExit(main())
