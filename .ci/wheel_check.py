"""Run by .ci/run inside a fresh venv holding only the built wheel (torch etc. from the system):
the README's Python snippets, unchanged, from a folder that is not the checkout."""
import re
import sys
from pathlib import Path

import shoeclass

readme = Path(sys.argv[1]).read_text(encoding="utf-8")
where = Path(shoeclass.__file__).resolve()
assert sys.prefix in str(where), f"shoeclass imported from {where}, not from the wheel in {sys.prefix}"
snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
assert snippets, "no Python snippet in the README"
for code in snippets:
    exec(compile(code, "README.md", "exec"), {})
print(f"wheel ok: {len(snippets)} README snippet(s) ran with shoeclass from {where.parent}")
