"""The fault scenarios of tests/faults/scenarios.py, run one after the other on whole local
federations (Mosquitto, server, 2 fog brokers, 2 bridges, 2 × 2 QoE clients, 4 rounds),
printed as a table: what was broken, whether the run finished, how many rounds had every
region, whether the final global model is exactly the undisturbed run's (the in-process
simulation of the same configuration and seed), and the time it cost against the run
without a fault.

    python benchmarks/faults.py                          # every scenario
    python benchmarks/faults.py --only broker-restart server-kill-resume
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.scenarios import (
    ROUNDS,
    SCENARIOS,
    Outcome,
    reference_model,
    run_scenario,
    scenario_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="scenarios to run")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON too")
    args = parser.parse_args()
    names = ["none", *[n for n in (args.only or SCENARIOS) if n != "none"]]
    reference = reference_model(scenario_config())
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="fogfl-faults-") as workdir:
        for name in names:
            outcome = run_scenario(name, Path(workdir), reference)
            outcomes.append(outcome)
            print(
                f"  {name}: {'ok' if outcome.finished else 'FAILED'} in {outcome.seconds:.1f} s",
                file=sys.stderr,
            )
    baseline = outcomes[0].seconds
    print(f"| scenario | outcome | rounds with every region (of {ROUNDS}) | exact | time lost |")
    print("|---|---|---|---|---|")
    for outcome in outcomes:
        verdict = "finished" if outcome.finished else "failed"
        if outcome.dead_roles:
            verdict += f"; died: {', '.join(outcome.dead_roles)}"
        lost = "—" if outcome.scenario == "none" else f"{outcome.seconds - baseline:+.1f} s"
        print(
            f"| {outcome.scenario} | {verdict} | {outcome.rounds_complete} | "
            f"{'yes' if outcome.exact else 'no'} | {lost} |"
        )
    print(f"\nbaseline (no fault): {baseline:.1f} s from launch to exit")
    for outcome in outcomes[1:]:
        print(f"- {outcome.scenario}: {outcome.note}")
    if args.json:
        print(json.dumps([vars(o) for o in outcomes], indent=2))


if __name__ == "__main__":
    main()
