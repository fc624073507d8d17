"""openlora-node's one import namespace: `openlora.node`, `openlora.inference`, `openlora.kernels`,
`openlora.attribution`, `openlora.datanets`, `openlora.devnet`, `openlora.content`, `openlora.factory`.

The code lives in the repository's top-level folders (node/, inference/, kernels/, ...), which keep the names the
design gives them; only the import names are prefixed, so that no top-level module of this project can collide with
another distribution's (Hugging Face's `kernels`, a dependency of transformers, is the case that bit).

- In a source checkout each name here is a symbolic link to its folder (`openlora/kernels -> ../kernels`), so an
  editable install, pytest and any process started in the repository root import the folders as they are.
- An installed wheel (`pip install .`) copies each folder beneath this package (pyproject.toml: `package-dir`).

The folder `kernels/` has no `__init__.py` on purpose: a regular package named `kernels` in the repository root
would shadow Hugging Face's for a process whose `sys.path` starts there. tests/test_packaging.py checks all of this.

This module imports nothing: `import openlora` stays cheap.
"""

__version__ = "0.1.0"

# The folders that hold this namespace's subpackages (kept in step with pyproject.toml by tests/test_packaging.py).
SUBPACKAGES = ("node", "inference", "kernels", "attribution", "datanets", "devnet", "content", "factory")
