"""`python -m llm_worker ...` from anywhere, and `python -m worker ...` from the repo root.

Run from the repo root, Python puts the root first on sys.path, where the source folders
(kernels/, schemas/, worker/) would shadow installed distributions that share their names:
transformers imports Hugging Face's `kernels`. The package is installed as `llm_worker`, so the
root has no business on the path: it leaves before anything else is imported.
"""

import os
import sys

_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]

from llm_worker.cli import main  # noqa: E402

raise SystemExit(main())
