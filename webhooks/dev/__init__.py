"""Development tooling: `webhooks dev` (`run`), the embedded Postgres and Redis behind it and a
service-less `make test` (`embedded`), and the demo receiver (`demo_receiver`).

These print and start servers, which the delivery code never does: only the CLI, the tests
and the benchmarks import this package, never a module of `webhooks` outside it.
"""
