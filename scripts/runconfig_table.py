"""Rewrite pyproject.toml's [tool.flwr.app.config] table from the config dataclasses (its
comment lines kept). Run after adding or changing a config field:
    .venv/bin/python scripts/runconfig_table.py
tests/test_flwr_run.py fails until the two agree."""

from pathlib import Path

from autofednlp.config.runconfig import pyproject_table

path = Path(__file__).resolve().parent.parent / "pyproject.toml"
text = path.read_text()
start = text.index("[tool.flwr.app.config]")
end = text.index("[tool.pytest.ini_options]")
comments = [ln for ln in text[start:end].splitlines()[1:] if ln.startswith("#")]
table = pyproject_table().rstrip("\n").splitlines()
path.write_text(text[:start] + "\n".join([table[0], *comments, *table[1:]]) + "\n\n" + text[end:])
print(f"updated {path}")
