"""Create the benchmark's users and bearer tokens in bulk, before the daemon starts.

``jmappushctl user add`` hashes each password with the production scrypt cost
(tens of milliseconds) and starts a process per user, which is fine for the few
users a person adds but would take many minutes for 10,000. This calls the same
store methods jmappushctl calls, in one process, with a cheap hash: these users
authenticate with bearer tokens only. Output: a JSON file of
``[{"name", "account", "token"}, ...]``.

    python -m benchmarks.setup_users --config bench.ini --count 10000 --out users.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet import defer, task

from jmappushd.auth.passwords import hash_password, new_bearer_token, token_digest
from jmappushd.config import load_config
from jmappushd.daemon.service import prepare_state
from jmappushd.store.backends import create_store
from jmappushd.store.interface import IPrincipalStore

CHEAP_LOG_N = 4  # never used to log in: these users present bearer tokens


async def create(reactor: Any, config_path: str, count: int, prefix: str) -> list[dict[str, str]]:
    config = load_config(config_path)
    prepare_state(config)
    store = create_store(config.storage, reactor)
    await store.open()
    password_hash = hash_password("unused-bench-password", CHEAP_LOG_N)
    out: list[dict[str, str]] = []
    try:
        for start in range(0, count, 500):
            names = [f"{prefix}{i}" for i in range(start, min(count, start + 500))]
            users = await defer.gatherResults(
                [defer.ensureDeferred(_user(store, name, password_hash)) for name in names])
            out.extend(users)
    finally:
        await store.close()
    return out


async def _user(store: IPrincipalStore, name: str, password_hash: str) -> dict[str, str]:
    user = await store.add_user(name, password_hash, None)
    token = new_bearer_token()
    await store.create_token(name, token_digest(token), "benchmark")
    return {"name": name, "account": user.primary_account_id, "token": token}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    async def run(reactor: Any) -> None:
        users = await create(reactor, args.config, args.count, args.prefix)
        with open(args.out, "w") as handle:
            json.dump(users, handle)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
