"""When the job controller plans: coalescing membership changes, retrying failures.

Where it sits: controller/job.py asks for a plan with `request(reason)` on every
membership change; this class waits a short coalescing window (two failures in one
step become one generation), calls the job's `plan(reasons)`, plans again for changes
that arrived meanwhile, and retries each second when planning fails (the store is
away: membership changes wait, training does not), failing the job only after
`max_attempts` failures in a row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class ReplanScheduler:
    def __init__(
        self,
        plan: Callable[[str], Awaitable[None]],
        give_up: Callable[[str], None],
        note: Callable[[str, str], None],
        *,
        coalesce_s: float,
        retry_s: float = 1.0,
        max_attempts: int = 120,
    ) -> None:
        self._plan, self._give_up, self._note = plan, give_up, note
        self.coalesce_s, self.retry_s, self.max_attempts = coalesce_s, retry_s, max_attempts
        self._reasons: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        """Failed attempts in a row."""
        self.stopped = False

    @property
    def idle(self) -> bool:
        """Nothing requested or being planned."""
        return not self._reasons and (self._task is None or self._task.done())

    def request(self, reason: str) -> None:
        self._reasons.append(reason)
        if not self.stopped and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        await asyncio.sleep(self.coalesce_s)
        while self._reasons and not self.stopped:
            reasons, self._reasons = self._reasons, []
            try:
                await self._plan("; ".join(dict.fromkeys(reasons)))
                self.failures = 0
            except Exception as exc:
                self.failures += 1
                log.exception("planning failed (%d in a row)", self.failures)
                if self.failures >= self.max_attempts:
                    self._give_up(f"could not plan {self.failures} times in a row: {exc!r}")
                    return
                if self.failures == 1:
                    self._note("replan_failed", f"{exc!r}; retrying every {self.retry_s:g}s")
                self._reasons = reasons + self._reasons
                await asyncio.sleep(self.retry_s)
