"""airgap-install: verify a signed bundle and run its compose stack on an isolated host."""

__version__ = "0.1.0"
