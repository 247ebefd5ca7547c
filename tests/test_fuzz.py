"""A bounded fuzz campaign over every public entry point (issue 18, item 9).

Constructors, calls, training (fixed and online data), estimators, metrics, load and sweep
(tests/fuzz_targets.py says what is called and how an outcome is judged) receive arguments
drawn by hypothesis: plausible values with some replaced by hostile ones. Each batch runs in a
subprocess, so a crash is counted rather than taking pytest down. Counted per campaign, and
required to be 0: crashes, silent NaN (a non-finite value returned where none is documented),
wrong exception types, and models or inputs changed by a call that raised (or by a read).

The default run draws a few hundred cases (under a minute); the slow run at least 10,000:
``pytest -m slow tests/test_fuzz.py -s`` prints the counts. Run one batch by hand with
``python tests/test_fuzz.py <group> <cases> <seed>``.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GROUPS = ["constructors", "calls", "train", "train_online", "estimators", "metrics", "load",
          "sweep"]
PROBLEMS = ("crashes", "silent_nan", "wrong_type", "changed_model")


def run_batch(group, n_cases, seed):
    """Run one batch in this process: the counts of each kind of outcome, and examples."""
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    import fuzz_targets

    warnings.simplefilter("ignore")  # NumPy's overflow warnings are not what is counted here
    strategy, run, allowed = fuzz_targets.TARGETS[group]
    counts = dict(cases=0, ok=0, refused=0, crashes=0, silent_nan=0, wrong_type=0,
                  changed_model=0)
    examples = []

    @hypothesis_seed(seed)
    @settings(max_examples=n_cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strategy())
    def case(args):
        out = run(args)
        counts["cases"] += 1
        problem = None
        if out.error is None:
            if out.bad_result:
                problem = ("silent_nan", out.bad_result)
            else:
                counts["ok"] += 1
        elif isinstance(out.error, allowed):
            counts["refused"] += 1
        else:
            problem = ("wrong_type", f"{type(out.error).__name__}: {out.error}")
        if out.changed:
            counts["changed_model"] += 1
            examples.append(("changed_model", f"{out.changed} after {out.error!r}"[:300]))
        if problem:
            counts[problem[0]] += 1
            if len(examples) < 20:
                examples.append((problem[0], problem[1][:300], repr(args)[:300]))

    case()
    return counts, examples


def run_campaign(batches, timeout=600):
    """Run (group, cases, seed) batches, each in its own subprocess; summed counts per group
    and the examples of every problem."""
    totals, examples = {}, []
    for group, n_cases, seed in batches:
        proc = subprocess.run([sys.executable, os.path.join(HERE, "test_fuzz.py"), group,
                               str(n_cases), str(seed)], capture_output=True, text=True,
                              timeout=timeout, cwd=HERE)
        total = totals.setdefault(group, dict(cases=0, ok=0, refused=0, crashes=0,
                                              silent_nan=0, wrong_type=0, changed_model=0))
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
            total["crashes"] += 1
            examples.append((group, "crash", f"rc {proc.returncode}: {proc.stderr[-800:]}"))
            continue
        result = json.loads(lines[-1])
        for k, v in result["counts"].items():
            total[k] += v
        examples += [(group, *e) for e in result["examples"]]
    return totals, examples


def _report(totals, examples):
    lines = [f"{'group':14s} {'cases':>6s} {'ok':>6s} {'refused':>8s} " +
             " ".join(f"{p:>13s}" for p in PROBLEMS)]
    for group, t in totals.items():
        lines.append(f"{group:14s} {t['cases']:6d} {t['ok']:6d} {t['refused']:8d} " +
                     " ".join(f"{t[p]:13d}" for p in PROBLEMS))
    all_ = {k: sum(t[k] for t in totals.values()) for k in next(iter(totals.values()))}
    lines.append(f"{'all':14s} {all_['cases']:6d} {all_['ok']:6d} {all_['refused']:8d} " +
                 " ".join(f"{all_[p]:13d}" for p in PROBLEMS))
    lines += [f"  {e}" for e in examples[:40]]
    return all_, "\n".join(lines)


def _check(batches, min_cases):
    totals, examples = run_campaign(batches)
    all_, text = _report(totals, examples)
    print("\n" + text)
    assert all_["cases"] >= min_cases, text
    for group, t in totals.items():
        assert t["ok"] > 0 and t["refused"] > 0, f"{group}: the campaign must reach both " \
                                                 f"valid and refused calls\n{text}"
    assert all(all_[p] == 0 for p in PROBLEMS), text


def test_fuzz_campaign_default():
    # 8 groups x 40 cases, one subprocess each
    _check([(g, 40, 20261202 + i) for i, g in enumerate(GROUPS)], min_cases=250)


@pytest.mark.slow
def test_fuzz_campaign_slow():
    # 8 groups x 1300 cases in batches of 260: over 10,000 cases
    _check([(g, 260, 1000 * i + b) for i, g in enumerate(GROUPS) for b in range(5)],
           min_cases=10_000)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    counts, examples = run_batch(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(dict(counts=counts, examples=examples)))
