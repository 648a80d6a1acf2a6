"""Rewrite dvc.yaml's code deps from each stage's imports: `python tests/update_dvc_deps.py`.

The list under each stage's "# the code it runs" comment is replaced by the closure of the
`sdpose` modules its entry module imports (`import_graph.stage_code`), sorted; everything
else in the file stays as written. tests/unit/layout/test_dvc_deps.py checks the result.
"""

from __future__ import annotations

import re

from import_graph import REPO, stage_code

from sdpose.stages import STAGES

MARKER = "# the code it runs"


def rewrite(text: str) -> str:
    """dvc.yaml's text with each stage's code deps regenerated."""
    lines, out, stage = text.splitlines(keepends=True), [], None
    index = 0
    while index < len(lines):
        line = lines[index]
        header = re.match(r"^  (\w+):\s*$", line)
        if header:
            stage = header.group(1)
        out.append(line)
        index += 1
        if MARKER in line and stage in STAGES:
            indent = line[: len(line) - len(line.lstrip())]
            while index < len(lines) and lines[index].strip().startswith("- sdpose/"):
                index += 1  # the old list
            out += [f"{indent}- {path}\n" for path in sorted(stage_code(STAGES[stage].module))]
    return "".join(out)


def main() -> None:
    path = REPO / "dvc.yaml"
    text = path.read_text()
    new = rewrite(text)
    path.write_text(new)
    print("dvc.yaml: code deps " + ("updated" if new != text else "already current"))


if __name__ == "__main__":
    main()
