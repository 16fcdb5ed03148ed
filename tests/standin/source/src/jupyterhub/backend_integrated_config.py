# JupyterHub configuration with the AI-Infra backend as authenticator (bind-mounted read-only
# by compose; the image's CMD starts JupyterHub with this file).
import os

exec(open("/srv/jupyterhub/jupyterhub_config.py").read())  # noqa: S102

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"  # noqa: F821
c.DockerSpawner.image = os.environ.get("JUPYTERHUB_IMAGE", "ai-infra-singleuser:latest")  # noqa: F821
c.DockerSpawner.network_name = os.environ.get("JUPYTERHUB_NETWORK", "ai-infra-network")  # noqa: F821
c.DockerSpawner.mem_limit = os.environ.get("JUPYTERHUB_MEM_LIMIT", "2G")  # noqa: F821
AI_INFRA_BACKEND_URL = os.environ.get("AI_INFRA_BACKEND_URL", "http://backend:8082")
