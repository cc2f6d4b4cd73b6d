#!/usr/bin/env bash
# The project's checks, in order: the import contracts (pyproject.toml, [tool.importlinter]), lint
# and format (ruff), then the tests. Arguments go to pytest, e.g. `bash scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
