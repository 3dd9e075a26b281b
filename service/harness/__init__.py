"""Local processes and data for tests and benchmarks (both import from here, never from each
other): a real service in a private home, PostgreSQL and S3 on loopback, a fleet of
replicas and workers, and the shared data sets. The service itself never imports this."""
