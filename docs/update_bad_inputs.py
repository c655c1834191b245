"""Refresh the message column of docs/bad_inputs.md from what the library prints now.

    python docs/update_bad_inputs.py

Runs every case of tests/test_bad_input.py in a temporary directory and writes the message it
raised (or the CLI's one line) into the table; the other columns are kept.
"""

import contextlib
import io
import pathlib
import re
import sys
import tempfile
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_bad_input as cases  # noqa: E402


def message(fn) -> str:
    tmp = pathlib.Path(tempfile.mkdtemp())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(tmp)
        text = err.getvalue().strip()
    except Exception as e:  # noqa: BLE001 - the message is what we want
        text = str(e).strip().splitlines()[0]
    return text.replace(str(tmp), "/tmp/...").replace("|", "\\|")


def main():
    doc = ROOT / "docs" / "bad_inputs.md"
    text = doc.read_text()
    for case, (fn, _, _) in sorted(cases.CASES.items()):
        row = re.search(rf"^\| `{case}` \|.*$", text, flags=re.M).group(0)
        head = row.rsplit("|", 2)[0]
        text = text.replace(row, f"{head}| {message(fn)} |")
    doc.write_text(text)


if __name__ == "__main__":
    main()
