#!/usr/bin/env bash
# Create benchmarks/.dgl-venv: a separate environment in which DGL 2.1.0 imports.
#
# DGL's newest wheel (2.1.0) does not import with torch 2.13 (its graphbolt
# library exists only for torch 2.0-2.2.1), so the DGL peer runs in its own
# venv with torch 2.2.1 and is driven as a separate process by
# benchmarks/dgl_gcn.py.  About 5 GB on disk (torch 2.2.1 from PyPI carries
# its CUDA libraries).  Idempotent: re-running checks the import and exits.
#
# Usage: bash benchmarks/dgl_env.sh            # creates benchmarks/.dgl-venv
#        DGL_VENV=/some/dir bash benchmarks/dgl_env.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${DGL_VENV:-$here/.dgl-venv}"
py="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import dgl, torch" 2>/dev/null; then
    echo "dgl venv ready: $venv"
    "$venv/bin/python" -c "import dgl, torch; print('dgl', dgl.__version__, 'torch', torch.__version__)"
    exit 0
fi

"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade 'pip<25'
"$venv/bin/python" -m pip install torch==2.2.1 'numpy<2' 'setuptools<70' 'pandas<2.3' \
    pyyaml pydantic dgl==2.1.0
"$venv/bin/python" -m pip install torchdata==0.7.1 --no-deps
"$venv/bin/python" -c "import dgl, torch; print('dgl', dgl.__version__, 'torch', torch.__version__)"
echo "dgl venv ready: $venv"
