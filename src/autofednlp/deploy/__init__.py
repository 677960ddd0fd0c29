"""Running on real machines: TLS certificates and SuperNode keys for Flower's deployment engine
(see docs/deploy.md)."""
