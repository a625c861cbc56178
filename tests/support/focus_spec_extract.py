"""How ``focus_spec_1_0.yaml`` and ``focus_spec_1_2.yaml`` were made: the 'Content constraints' and 'Allowed values'
tables of every column file a FOCUS release tag includes, read from a clone of the spec repository.

    git clone https://github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec /tmp/FOCUS_Spec
    python -m tests.support.focus_spec_extract /tmp/FOCUS_Spec v1.2 > tests/support/focus_spec_1_2.yaml

(1.3 has no tag in the clone this was made from; ``focus_spec_1_3.yaml`` was assembled by hand from the files it
names.) Not run by the tests: the tables are committed data, so the conformance tests need no network.
"""

from __future__ import annotations

import re
import subprocess
import sys

TABLE_KEYS = ("Feature level", "Allows nulls", "Data type")
VALUE_COLUMNS = (("ChargeCategory", "chargecategory"), ("ChargeClass", "chargeclass"),
                 ("ChargeFrequency", "chargefrequency"), ("ServiceCategory", "servicecategory"))


def show(repo: str, tag: str, path: str) -> str | None:
    done = subprocess.run(["git", "-C", repo, "show", f"{tag}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def constraints(text: str) -> tuple[str, dict[str, str]]:
    found = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*([A-Za-z ]+?)\s*\|\s*(.+?)\s*\|\s*$", line)
        if m and m.group(1) in TABLE_KEYS:
            found[m.group(1)] = m.group(2)
    column_id = re.search(r"## Column ID\s+(\w+)", text)
    assert column_id is not None
    return column_id.group(1), found


def allowed_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.split("Allowed values:", 1)[1].splitlines():
        if line.startswith("## "):
            break
        if line.startswith("|") and not re.match(r"\|\s*:?-", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # the header


def main(repo: str, tag: str) -> None:
    commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    index = show(repo, tag, "specification/columns/columns.mdpp") or ""
    print(f"# FOCUS {tag.lstrip('v')} Cost and Usage columns: the 'Content constraints' table of each column file.")
    print(f"# Source: FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec tag {tag} (commit {commit}),")
    print("# specification/columns/columns.mdpp and the column files it includes. Generated, then committed: do not edit.")
    print(f'version: "{tag.lstrip("v")}"')
    print(f"source: {{repo: FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, tag: {tag}, commit: {commit}}}")
    print("columns:")
    for name in re.findall(r'!INCLUDE "(\w+\.md)"', index):
        cid, t = constraints(show(repo, tag, f"specification/columns/{name}") or "")
        nullable = str(t["Allows nulls"].lower() == "true").lower()
        print(f"  {cid}: {{level: {t['Feature level']}, nullable: {nullable}, type: {t['Data type']}, "
              f"file: specification/columns/{name}}}")
    print("allowed_values:  # the 'Allowed values' table of each column file at the same tag")
    for column, name in VALUE_COLUMNS:
        values = [r[0] for r in allowed_rows(show(repo, tag, f"specification/columns/{name}.md") or "")]
        print(f"  {column}: [{', '.join(f'{chr(34)}{v}{chr(34)}' for v in values)}]")
    sub = show(repo, tag, "specification/columns/servicesubcategory.md")
    if sub:
        print("service_subcategories:  # ServiceSubcategory -> its one parent ServiceCategory (servicesubcategory.md)")
        for r in allowed_rows(sub):
            print(f'  "{r[1]}": "{r[0]}"')


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
