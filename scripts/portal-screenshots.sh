#!/usr/bin/env bash
# Re-take the screenshots in docs/portal/ (PNG): the browser test walks every
# page and saves one picture per page. Needs Debian's chromium (make system-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
make .venv/.installed >/dev/null
QANAT_SCREENSHOTS=docs/portal .venv/bin/pytest -q -p no:cacheprovider \
    tests/portal/test_browser_pages.py
ls -l docs/portal/*.png
