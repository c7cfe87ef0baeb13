"""Human labelling: a local web app where people judge pairs (A/B, tie, skip) and rank K responses.

    alignlab label tokens DB --add NAME      a labeller and their token (printed once, stored hashed)
    alignlab label serve DATA [--db DB]      the app; labellers open http://HOST:PORT/login?token=...
    alignlab label export DB --out FILE      a preference (or --format rankings) dataset

Modules: `items` (reading DATA), `tokens`, `answers` (answers and the per-labeller shuffle),
`database` (one SQLite connection, WAL, the schema), `store` (one label per labeller and item),
`app` (access control and routes), `handlers` (the pages and the JSON API), `page`, `export`, `cli`.
The package imports nothing itself, so `alignlab --help` does not pay for the app.
"""
