"""Real services on loopback for ncaas's own tests and benchmarks (not used by the platform):
``ncaas serve`` and PostgreSQL (:mod:`.servers`), a Ray cluster of local nodes (:mod:`.ray_cluster`)."""
