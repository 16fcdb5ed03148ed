# JupyterHub configuration for AI-Infra Matrix (site copy, bind-mounted read-only).
import os

c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://:8000/jupyter"
c.DockerSpawner.image = os.environ.get("JUPYTERHUB_IMAGE", "ai-infra-singleuser:latest")
c.DockerSpawner.network_name = os.environ.get("JUPYTERHUB_NETWORK", "ai-infra-network")
c.JupyterHub.crypt_key = os.environ.get("JUPYTERHUB_CRYPT_KEY", "")
