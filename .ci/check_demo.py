"""CI's judge of `bash dev.sh demo --steps 60`: the summary that `elastiq run
--summary-json` wrote must show the job succeeded, survived the demo's kill, and lost no
committed step. Exit 1 with the reason otherwise."""

from __future__ import annotations

import json
import sys


def problems(summary: dict[str, object]) -> list[str]:
    found = []
    if summary.get("phase") != "Succeeded":
        found.append(f"phase is {summary.get('phase')!r}: {summary.get('error') or 'no error'}")
    if summary.get("steps") != summary.get("total_steps"):
        found.append(f"reached step {summary.get('steps')} of {summary.get('total_steps')}")
    recoveries = summary.get("recoveries")
    if not isinstance(recoveries, list) or not recoveries:
        found.append("no recovery recorded: the demo's kill did not happen or was not survived")
    else:
        for r in recoveries:
            if r.get("lost_steps") != 0:
                found.append(f"generation {r.get('generation')} lost {r.get('lost_steps')} steps")
    if summary.get("failures_survived") != summary.get("failures"):
        found.append(f"survived {summary.get('failures_survived')} of {summary.get('failures')}")
    return found


def main(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        summary = json.load(fh)
    found = problems(summary)
    if found:
        print("demo check FAILED: " + "; ".join(found), file=sys.stderr)
        return 1
    recoveries = summary["recoveries"]
    print(
        f"demo check: {summary['phase']}, {summary['steps']} steps, "
        f"{len(recoveries)} failure(s) survived, lost steps "
        f"{[r['lost_steps'] for r in recoveries]}, recovery "
        f"{[r['recovery_s'] for r in recoveries]} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
