# JupyterHub base configuration (bind-mounted read-only by compose).
import os

c = get_config()  # noqa: F821

c.JupyterHub.bind_url = "http://0.0.0.0:8000/jupyter/"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8091"
c.JupyterHub.db_url = "postgresql://{}:{}@{}:{}/{}".format(
    os.environ.get("POSTGRES_USER", "postgres"), os.environ.get("POSTGRES_PASSWORD", "postgres"),
    os.environ.get("POSTGRES_HOST", "postgres"), os.environ.get("POSTGRES_PORT", "5432"),
    os.environ.get("POSTGRES_DB", "jupyterhub_db"))
c.Authenticator.admin_users = set(os.environ.get("JUPYTERHUB_ADMIN_USERS", "admin").split(","))
