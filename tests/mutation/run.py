"""`make mutation`: break one line of a core module at a time, run the tests that cover it, and
count the mutants no test noticed. cosmic-ray makes the mutants (on disk, so that the daemons the
tests mount with run them too); this script bounds the run to under an hour on two cores.

How it is bounded:
- each module is tested by the test files that cover it (MODULES), fast ones first, stopping at
  the first failure (`-x`), with a deadline per mutant (a mutant that hangs counts as killed);
- a reduced set of operators: each binary and comparison operator is replaced by its nearest
  counterpart (`+`/`-`, `<`/`<=`, `==`/`!=`, `is`/`is not`, `in`/`not in` ...), not by all ten
  others; numbers, booleans, `and`/`or`, `not`, `break`/`continue`, exception types and loops
  that run zero times are all mutated;
- two workers, each in its own copy of the committed tree (`git archive HEAD`), run at once.

The sessions, the report and the survivors' diffs land in build/mutation/. Run one module with
`make mutation MODULES=naming`; `make mutation AGAIN=1` tests again only the mutants that survived
the last run (after tests were added), keeping every other result.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "mutation"
BIN = Path(sys.executable).parent
WORKERS = 2
FIRST_PORT = 9876

#: module -> (pytest arguments: the tests that cover it, seconds a mutant's tests may take)
MODULES = {
    "naming": (["tests/test_naming.py"], 60),
    # test_transfer.py drives Http.read_range_into, the worker-thread transport's retries and resumes.
    "http": (["tests/test_http.py", "tests/test_transfer.py"], 60),
    "reader": (["tests/test_readahead.py", "tests/test_blockcache.py"], 90),
    "blockcache": (["tests/test_blockcache.py", "tests/test_readahead.py"], 90),
    # The FUSE layer is only reached through a mount.
    "fs": (["tests/test_basespace.py::test_layout_as_basemount_users_know_it", "tests/test_semantics.py",
            "tests/test_basespace.py::test_ls_l_makes_no_request_per_file",
            "tests/test_basespace.py::test_missing_file_is_enoent_and_platform_errors_are_logged",
            "tests/test_basespace.py::test_the_daemon_forgets_what_the_kernel_forgets"], 240),
}

#: Operators left out (regular expressions over cosmic-ray's names), see the module docstring.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_(?!(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Mul|Mod_FloorDiv|Pow_Mul|"
    r"LShift_RShift|RShift_LShift|BitOr_BitAnd|BitAnd_BitOr|BitXor_BitOr)$).*",
    r"core/ReplaceComparisonOperator_(?!(Lt_LtE|LtE_Lt|Gt_GtE|GtE_Gt|Eq_NotEq|NotEq_Eq|Is_IsNot|IsNot_Is|In_NotIn|NotIn_In)$).*",
    r"core/ReplaceUnaryOperator_(?!(Delete_Not|USub_UAdd)$).*",
    # Random values (not reproducible) and decorators (a missing @dataclass breaks every import).
    "core/VariableReplacer", "core/VariableInserter", "core/RemoveDecorator",
]


def config(module: str) -> str:
    tests, seconds = MODULES[module]
    command = " ".join([sys.executable, "tests/mutation/run_tests.py", str(seconds), *(f"'{t}'" for t in tests)])
    urls = ", ".join(f'"http://127.0.0.1:{FIRST_PORT + n}"' for n in range(WORKERS))
    excluded = ",\n".join(f"    {json.dumps(pattern)}" for pattern in EXCLUDED_OPERATORS)
    return f"""[cosmic-ray]
module-path = "src/omicsfs/{module}.py"
timeout = {seconds + 60}
excluded-modules = []
test-command = {json.dumps(command)}

[cosmic-ray.distributor]
name = "http"

[cosmic-ray.distributor.http]
worker-urls = [{urls}]

[cosmic-ray.filters.operators-filter]
exclude-operators = [
{excluded},
]
"""


def copy_tree(destination: Path) -> None:
    """The committed tree, as a worker's own copy to mutate."""
    destination.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


def outcomes(session: Path) -> dict[str, list[dict]]:
    """'killed', 'survived', 'skipped', 'incompetent'... → the jobs (mutation and diff) of each."""
    found: dict[str, list[dict]] = {}
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT m.operator_name, m.start_pos_row, r.worker_outcome, r.test_outcome, r.diff, r.output "
            "FROM mutation_specs m JOIN work_results r ON m.job_id = r.job_id"
        ).fetchall()
    for operator, line, worker, test, diff, output in rows:
        outcome = ("skipped" if worker.lower() == "skipped" else (test or worker)).lower()
        found.setdefault(outcome, []).append({"operator": operator, "line": line, "diff": diff or "", "output": output or ""})
    return found


def main(modules: list[str], again: bool = False) -> int:
    if again:  # keep the sessions: only their survivors are tested again, by the tests as they are now
        for module in modules:
            with sqlite3.connect(OUT / f"{module}.sqlite") as db:
                db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
        for old in OUT.glob("worker-*"):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.setdefault("OMICSFS_TEST_DATA", str(ROOT / "build" / "emulator-data")))
    print(f"mutation: emulator data in {data} (generated once, reused by every test run)", flush=True)
    from omicsfs.emulator.server import EmulatorProcess

    EmulatorProcess(data, large_file_size="64M").wait_ready().stop()

    workers = []
    for number in range(WORKERS):
        copy = OUT / f"worker-{number}"
        copy_tree(copy)
        log = open(OUT / f"worker-{number}.log", "w")
        workers.append(subprocess.Popen([BIN / "cosmic-ray", "http-worker", "--port", str(FIRST_PORT + number)], cwd=copy,
                                        stdout=log, stderr=subprocess.STDOUT))
    time.sleep(2)
    summary = []
    try:
        for module in modules:
            started = time.monotonic()
            settings, session = OUT / f"{module}.toml", OUT / f"{module}.sqlite"
            settings.write_text(config(module))
            steps = [["cosmic-ray", "init", settings, session], ["cr-filter-operators", session, settings]]
            for step in ([] if again else steps) + [["cosmic-ray", "exec", settings, session]]:
                # In a worker's copy: the mutants are found in the very file the workers mutate.
                subprocess.run([str(BIN / step[0]), *map(str, step[1:])], cwd=OUT / "worker-0", check=True)
            found = outcomes(session)
            killed, survived = len(found.get("killed", [])), found.get("survived", [])
            other = {k: len(v) for k, v in found.items() if k not in ("killed", "survived", "skipped")}
            tested = killed + len(survived) + sum(other.values())
            minutes = (time.monotonic() - started) / 60
            line = f"{module}.py: {killed}/{tested} killed ({100 * killed / max(tested, 1):.1f}%), {len(survived)} survived"
            line += (f", {other}" if other else "") + f", {minutes:.1f} min"
            print(f"mutation: {line}", flush=True)
            summary.append((module, killed, tested, line))
            with open(OUT / f"{module}-survivors.diff", "w") as report:
                for job in sorted(survived, key=lambda job: job["line"]):
                    report.write(f"# {job['operator']} at line {job['line']}\n{job['diff']}\n")
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait()
    killed, tested = sum(s[1] for s in summary), sum(s[2] for s in summary)
    text = "\n".join(s[3] for s in summary) + f"\nall: {killed}/{tested} killed ({100 * killed / max(tested, 1):.1f}%)\n"
    (OUT / "score.txt").write_text(text)
    print(f"mutation:\n{text}survivors: {OUT}/<module>-survivors.diff", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(MODULES), again=os.environ.get("AGAIN", "") not in ("", "0")))
