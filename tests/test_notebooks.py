"""The notebooks are stored without outputs and run on this interpreter.

scripts/test.sh executes them (`pytest tests notebooks --nbmake`); these checks keep the stored
files clean: no outputs or execution counts in git, a kernel that resolves to the venv's python.
"""

import glob
import json
import os
import sys

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    names = {os.path.basename(path) for path in NOTEBOOKS}
    assert {"quickstart.ipynb", "fine_tuning.ipynb", "export_and_serve.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    with open(path, encoding="utf-8") as file:
        notebook = json.load(file)
    dirty = [
        index for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{os.path.basename(path)}: cells {dirty} have outputs; clear them before committing"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_the_notebook_kernel_runs_this_python():
    from jupyter_client.manager import KernelManager

    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert os.path.realpath(command[0]) == os.path.realpath(sys.executable)
