"""The notebooks in experiments/notebooks: stored without outputs, and each runs top to bottom.

Each runs headless in a fresh Jupyter kernel (nbclient) with KDJAX_NOTEBOOK_SMOKE=1, the
notebooks' own small settings, on the CPU; their data and runs go to a temporary folder.
"""

import glob
import os

import pytest

import conftest

NOTEBOOKS = sorted(glob.glob(os.path.join(conftest.ROOT, 'experiments', 'notebooks', '*.ipynb')))


def test_there_are_notebooks_and_they_are_stored_without_outputs():
  import nbformat  # pylint: disable=g-import-not-at-top
  names = [os.path.basename(n) for n in NOTEBOOKS]
  assert names == ['01_quickstart.ipynb', '02_your_own_pair.ipynb', '03_cloud_tpu.ipynb']
  for path in NOTEBOOKS:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == 'code']
    assert 'KDJAX_SOURCE' in code[0].source, f'{path}: the first code cell installs kdjax'
    for cell in code:
      assert cell.outputs == [] and cell.execution_count is None, f'{path}: outputs not stripped'


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('KDJAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('KDJAX_NOTEBOOK_WORKDIR', str(tmp_path / 'work'))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))  # never the user's data dir
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # Raises CellExecutionError, with the cell and its traceback, on failure.
  errors = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
