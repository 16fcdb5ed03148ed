# JupyterHub configuration spawning notebooks on Kubernetes (not used by compose).
c = get_config()  # noqa: F821
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
