"""What the tests share: ports, receivers, processes, polling, and the database/CLI/API helpers.

One module a concept: `ports`, `polling`, `receivers`, `processes`, `deliveries` (endpoints,
publishing, reading states), `cli` (the `webhooks` command), `api` (keys, a served API).
"""
