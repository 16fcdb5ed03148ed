# Minimal JupyterHub configuration (local users, no backend).
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://0.0.0.0:8000/jupyter/"
