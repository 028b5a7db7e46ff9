"""Real servers for the tests: PostgreSQL, Redis, service processes, a Kubernetes control plane."""
