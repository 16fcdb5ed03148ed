common-packages:
  pkg.installed:
    - pkgs:
      - curl
