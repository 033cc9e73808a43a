# Root conftest: its presence makes pytest put this checkout's root first on sys.path, so the
# tests import this tree's protocol/ and p2pnode/ even when another checkout is installed editable.
