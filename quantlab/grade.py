r"""``python -m quantlab.grade NOTEBOOK...``: the grading CLI (it lives in :mod:`quantlab.grading.cli`).

>>> main(["labs/01_linear_quantization.ipynb", "--json"])   # doctest: +SKIP
"""

import sys

from .grading.batch import NotebookResult, Submission, grade_notebooks, read_submission
from .grading.cli import format_table, load_extra_cases, main, write_csv

__all__ = ["main", "grade_notebooks", "read_submission", "NotebookResult", "Submission", "format_table",
           "write_csv", "load_extra_cases"]

if __name__ == "__main__":
    sys.exit(main())
