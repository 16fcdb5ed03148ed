// SSO helper shared with JupyterHub (mounted at /srv/jupyterhub/shared).
window.aiInfraSSO = { tokenKey: "ai-infra-token" };
