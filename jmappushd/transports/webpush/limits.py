"""The per-user creation rate limit for push subscriptions (PS-19, DESIGN: bounded).

Verification POSTs go to any URL a client names, so creations are rate-limited per
user: a client cannot use the daemon to flood a third party. The store enforces it
in the creating transaction (``IPushStore.create_push_subscription``), so on
PostgreSQL every node of a cluster counts against the same window (issue 13).
"""

from __future__ import annotations

from jmappushd.config import PushConfig
from jmappushd.store.records import CreationRate

__all__ = ["CREATE_WINDOW", "creation_rate"]

CREATE_WINDOW = 60.0  # ``[push] create-rate`` is per minute


def creation_rate(config: PushConfig) -> CreationRate:
    """``[push] create-rate`` creations per user in any minute (a sliding window)."""
    return CreationRate(config.create_rate, CREATE_WINDOW)
