base:
  '*':
    - ai-infra-config
