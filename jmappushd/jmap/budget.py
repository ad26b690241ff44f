"""What one Response may cost: ``[jmap] max-size-response`` (issue 11, API-21).

RFC 8620 §8.5 asks servers to protect themselves against resource exhaustion, and
result references (§3.7) let a small request select whole earlier results again and
again: each call that references the previous one twice doubles the response. One
:class:`ResponseBudget` per Request counts the octets of the Response as it will be
encoded (each method response is encoded as soon as it exists, so its size is
exact and the encoding is the one the transport sends) and the values result
references step through. A call that would pass the limit fails alone with a
method-level error (:func:`over_budget_error`); the calls before it keep their
results, and serverFail is never used, since the excess is the client's own.
"""

from __future__ import annotations

from jmappushd.jmap.registry import MethodError

STEP_COST = 16
"""Octets of budget one value costs when a result reference's path steps through it:
about what the C encoder writes in the time Python takes for one step. A path that
walks a million values to select almost nothing is work all the same."""

class OverBudget(Exception):
    """A result, or the values a reference selects, would pass ``max-size-response``."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class ResponseBudget:
    """The octets one Response may still take, and the steps its references may walk."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self.used = used

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def charge(self, octets: int) -> None:
        """Count ``octets`` that will be sent (or work done) whether or not they fit."""
        self.used += octets

    def take(self, octets: int, what: str) -> None:
        """Count ``octets`` if they fit in what remains, else raise :class:`OverBudget`."""
        if self.used + octets > self.limit:
            raise OverBudget(what)
        self.used += octets

    def steps(self, count: int, what: str) -> None:
        """Count ``count`` values a reference's path steps through (:data:`STEP_COST`)."""
        self.take(count * STEP_COST, what)


def over_budget_error(method: str, limit: int, what: str) -> MethodError:
    """The method error for a call that would pass ``max-size-response``.

    RFC 8620 defines ``requestTooLarge`` for /get and /set (§5.1, §5.3: more than the
    server is willing to process in one call, which the client fixes by splitting
    it), so those methods get it; every other method gets ``invalidArguments``
    (§3.6.2), the arguments being what made the result too large. The description
    names the limit and its value in both cases.
    """
    kind = "requestTooLarge" if method.endswith(("/get", "/set")) else "invalidArguments"
    return MethodError(
        kind, f"{what} would exceed max-size-response ({limit} octets), the server's "
        "limit on the size of one response and on the values its result references "
        "step through.")
