#!/bin/sh
# Stand-in for docker-stacks' start-notebook.sh: the single-user server JupyterHub spawns
# (busybox httpd on 8888, /health answers ok).
echo "Jupyter Server (stand-in) listening on :8888, lab enabled: ${JUPYTER_ENABLE_LAB:-no}"
STANDIN_PORTS=8888 exec standin-serve
