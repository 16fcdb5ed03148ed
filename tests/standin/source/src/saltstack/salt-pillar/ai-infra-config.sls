ai_infra:
  backend_url: http://backend:8082
