"""moetheory's benchmark: moetheory against NumPy (tests/reference.py), PyTorch eager and jitted
JAX, on the workloads of shared BENCH.md, side by side in one run, plus the dgemm limit.

    python benchmarks/run.py [--quick] [--threads N] [--only W1,W2] [--markdown]

Each (system, section) runs in its own subprocess, pinned to the run's cores with the BLAS/OpenMP
thread variables set to --threads before any import: a system that fails to import is reported
"not installed", a missing API piece "n/a", a crash of one system never stops the others.
Per workload: same data, same theta0, float64, warm-up (and JAX's compilation) excluded, the
same number of steps for every system; the figure is the median over the repeats of
(time of one repeat) / (steps in it).  Ratios are peer time / moetheory time (>1: moetheory faster).
The limit is the GEMM FLOP count of a forward + backward (workloads.flops) over the dgemm rate of
scipy-openblas32 (the BLAS moetheory links) measured in the same run: at the start and again
before each section, each section's limit using the largest rate measured so far (a limit is
the best the BLAS reached; one measurement moved by 20% between runs on a shared host).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.append(ROOT)  # a moetheory built in place; an installed one comes first

SYSTEMS = ["moetheory", "numpy", "torch", "jax"]
PEERS = ["numpy", "torch", "jax"]
MODULES = {"moetheory": "peers_moetheory", "numpy": "peers_numpy", "torch": "peers_torch",
           "jax": "peers_jax"}
AGREE_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# Worker side (runs in a subprocess)
# ---------------------------------------------------------------------------------------------
def _pin(threads: int):
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, set(cpus[:threads]))
    except (AttributeError, OSError):
        pass


def _emit(obj):
    sys.stdout.write("RESULT " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _classify(exc) -> str:
    name = type(exc).__name__
    if name in ("AttributeError", "NotImplementedError", "TypeError", "NotAvailable"):
        return "n/a"
    return "error"


def _probe(vec, k=4):
    """A few seeded random projections of a gradient: compared across systems."""
    import numpy as np
    rng = np.random.default_rng(99)
    R = rng.standard_normal((k, vec.size))
    return [float(x) for x in R @ vec]


def worker(args):
    """A persistent worker for one system and one section, driven over stdin by the parent so
    that the systems' repeats interleave (a shared, noisy machine then loads them alike):
        SETUP <workload>  -> READY {steps, repeats, est} | RESULT {status != ok}
        REPEAT            -> TIME <seconds per step>
        FINISH            -> RESULT {status: ok, loss, ...}
        QUIT"""
    import importlib

    _pin(args.threads)
    if args.worker == "dgemm":
        import dgemm_rate
        _emit(dgemm_rate.measure(args.threads))
        return 0
    import workloads as wl

    err = None
    desc = ""
    try:
        mod = importlib.import_module(MODULES[args.worker])
        mod.setup(args.threads)
        desc = mod.describe() if hasattr(mod, "describe") else ""
    except Exception as e:  # an import that fails: not installed
        err = {"status": "not installed", "why": "%s: %s" % (type(e).__name__, str(e)[:200])}
    if err is None and args.worker == "numpy":
        try:
            mod.load_reference()
        except Exception as e:
            err = {"status": "n/a", "why": "%s: %s" % (type(e).__name__, str(e)[:200])}

    cur = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "QUIT":
            break
        if cmd[0] == "SETUP":
            w = wl.ALL[cmd[1]]
            if err is not None:
                _emit(dict(err, workload=w.name))
                continue
            try:
                cur = _Timed(mod, w, args)
                _emit({"ready": True, "workload": w.name, "steps": cur.steps,
                       "repeats": cur.repeats, "est": cur.est, "desc": desc})
            except Exception as e:
                cur = None
                _fail(w, e)
        elif cmd[0] == "REPEAT":
            try:
                sys.stdout.write("TIME %r\n" % cur.repeat())
            except Exception as e:
                sys.stdout.write("FAIL %s: %s\n" % (type(e).__name__, str(e)[:200]))
                import traceback
                traceback.print_exc()
            sys.stdout.flush()
        elif cmd[0] == "FINISH":
            try:
                _emit(dict(cur.finish(), workload=cur.w.name, status="ok", desc=desc))
            except Exception as e:
                _fail(cur.w, e)
            cur = None
    return 0


def _fail(w, e):
    import traceback
    traceback.print_exc()
    _emit({"workload": w.name, "status": _classify(e),
           "why": "%s: %s" % (type(e).__name__, str(e)[:200])})


class _Timed:
    """One workload of one system: set up and warmed up on construction."""

    def __init__(self, mod, w, args):
        import workloads as wl

        self.w, self.args = w, args
        data = wl.make_data(w)
        maker = mod.make_loss_and_grad if args.section == "loss_and_grad" else mod.make_train
        self.reset, self.run, self.result = maker(w, data)
        steps = w.quick_steps if args.quick else w.steps
        repeats = args.repeats
        warm = max(1, steps // 10)
        self.reset()
        self.run(warm)                 # warm-up: JIT compilation, allocations, thread start
        self.reset()
        t = time.perf_counter()
        self.run(warm)                 # the estimate, used only to keep a system within budget
        est = (time.perf_counter() - t) / warm
        self.capped = False
        if est * steps * repeats > args.budget:
            self.capped = True
            steps = max(1, int(args.budget / (est * repeats)))
            if est * steps * repeats > args.budget and repeats > 3:
                repeats = max(3, int(args.budget / (est * steps)))
        self.steps, self.repeats, self.est = steps, repeats, est

    def repeat(self):
        self.reset()
        t = time.perf_counter()
        self.run(self.steps)
        return (time.perf_counter() - t) / self.steps

    def finish(self):
        out = {"steps": self.steps, "capped": self.capped}
        if self.args.section == "loss_and_grad":
            import numpy as np
            loss, g = self.result()
            out.update(loss=loss, gnorm=float(np.linalg.norm(g)), gsize=int(g.size),
                       probe=_probe(g))
        else:
            out["loss"] = self.result()  # the loss after the last repeat (steps from theta0)
        return out


# ---------------------------------------------------------------------------------------------
# Memory check (runs in a subprocess): peak RSS of a few W3 loss_and_grad calls
# ---------------------------------------------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memcheck(args):
    import importlib
    import resource

    _pin(args.threads)
    import numpy as np
    import workloads as wl

    w = wl.W3
    res = {"system": args.memcheck}
    try:
        mod = importlib.import_module(MODULES[args.memcheck])
        mod.setup(args.threads)
    except Exception as e:
        res.update(status="not installed", why="%s: %s" % (type(e).__name__, str(e)[:200]))
        _emit(res)
        return 0
    base = _rss_kb()
    # data straight from the generator (a teacher forward would add its own temporaries)
    rng = np.random.default_rng(0)
    data = wl.Data(X=rng.standard_normal((w.n, w.d)), y=rng.standard_normal((w.n, w.d_out)),
                   theta0=wl.init_theta(w, 0), teacher=None)
    try:
        _, run, _ = mod.make_loss_and_grad(w, data)
        run(3)
    except Exception as e:
        res.update(status=_classify(e), why="%s: %s" % (type(e).__name__, str(e)[:200]))
        _emit(res)
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    budget = wl.data_bytes(w)
    res.update(status="ok", peak_bytes=peak * 1024, base_bytes=base * 1024, budget_bytes=budget,
               ratio=peak * 1024 / budget, ratio_above_base=(peak - base) * 1024 / budget)
    _emit(res)
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------
def _env(threads: int):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _spawn(extra, threads, timeout, log):
    cmd = [sys.executable, os.path.abspath(__file__)] + extra
    t = time.time()
    try:
        p = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = "timeout after %ds" % timeout
        rc = "timeout"
    results = [json.loads(l[7:]) for l in stdout.splitlines() if l.startswith("RESULT ")]
    if log:
        with open(log, "a") as f:
            f.write("$ %s  (rc=%s, %.1fs)\n%s\n" % (" ".join(extra), rc, time.time() - t,
                                                    stderr[-4000:]))
    return results, rc, stderr


class _Proc:
    """The parent's handle on one persistent worker; a reader thread queues its stdout lines."""

    def __init__(self, system, section, ws, args):
        import queue
        import tempfile
        import threading

        self.system, self.args = system, args
        self.err = tempfile.TemporaryFile(mode="w+")
        extra = ["--worker", system, "--section", section, "--workloads",
                 ",".join(w.name for w in ws), "--threads", str(args.threads),
                 "--repeats", str(args.repeats), "--budget", str(args.budget)]
        extra += ["--quick"] if args.quick else []
        self.extra = extra
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + extra,
                                  env=_env(args.threads), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)
        self.q = queue.Queue()
        self.dead = False

        def pump():
            for line in self.p.stdout:
                self.q.put(line)
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def send(self, cmd):
        try:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self, prefixes, timeout):
        """The next line starting with one of prefixes (other output is skipped), or None."""
        import queue
        deadline = time.time() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                return None
            if line is None:
                self.dead = True
                return None
            if line.startswith(prefixes):
                return line.rstrip("\n")

    def why_dead(self):
        rc = self.p.poll()
        self.err.seek(0)
        tail = [l for l in self.err.read().strip().splitlines() if l.strip()][-1:]
        return "crashed (rc=%s)%s" % (rc, (": " + tail[0][:160]) if tail else "") if rc is not None \
            else "no answer within the timeout"

    def close(self):
        self.send("QUIT")
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        if self.args.log:
            self.err.seek(0)
            with open(self.args.log, "a") as f:
                f.write("$ %s (rc=%s)\n%s\n" % (" ".join(self.extra), self.p.returncode,
                                               self.err.read()[-4000:]))
        self.err.close()


def run_section(section, ws, systems, args):
    """{system: {workload: result}}; per workload every system is set up and warmed up in turn,
    then the timed repeats go round-robin over the systems."""
    procs = {s: _Proc(s, section, ws, args) for s in systems}
    res = {s: {} for s in systems}
    T = args.timeout
    try:
        for w in ws:
            ready = {}
            for s, pr in procs.items():
                time.sleep(args.settle)
                if pr.dead or not pr.send("SETUP " + w.name):
                    res[s][w.name] = {"status": "error", "why": pr.why_dead()}
                    continue
                line = pr.read(("RESULT ",), T)
                if line is None:
                    res[s][w.name] = {"status": "error", "why": pr.why_dead()}
                    continue
                r = json.loads(line[7:])
                if r.get("ready"):
                    ready[s] = r
                    r["times"] = []
                else:
                    res[s][w.name] = r
            for i in range(max((r["repeats"] for r in ready.values()), default=0)):
                for s, r in ready.items():
                    if i >= r["repeats"] or r.get("failed"):
                        continue
                    pr = procs[s]
                    time.sleep(args.settle)  # let the last system's idle threads stop spinning
                    line = pr.read(("TIME ", "FAIL "), T) if pr.send("REPEAT") else None
                    if line is None or line.startswith("FAIL "):
                        r["failed"] = line[5:] if line else pr.why_dead()
                    else:
                        r["times"].append(float(line[5:]))
            for s, r in ready.items():
                pr = procs[s]
                if r.get("failed"):
                    res[s][w.name] = {"status": "error", "why": r["failed"]}
                    if pr.dead:
                        continue
                line = pr.read(("RESULT ",), T) if pr.send("FINISH") else None
                if r.get("failed"):
                    continue
                if line is None:
                    res[s][w.name] = {"status": "error", "why": pr.why_dead()}
                    continue
                fin = json.loads(line[7:])
                if fin.get("status") == "ok":
                    fin.update(times=r["times"], median=statistics.median(r["times"]),
                               repeats=len(r["times"]))
                res[s][w.name] = fin
    finally:
        for pr in procs.values():
            pr.close()
    return res


def _fmt_t(s):
    if s is None:
        return "n/a"
    if s >= 1:
        return "%.3f s" % s
    if s >= 1e-3:
        return "%.3f ms" % (s * 1e3)
    return "%.1f us" % (s * 1e6)


def _cell(r):
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "error")
    return _fmt_t(r["median"]) + ("*" if r.get("capped") else "")


def _ratio(peer, mt):
    if not (peer and mt and peer.get("status") == "ok" and mt.get("status") == "ok"):
        return "n/a"
    return "%.2fx" % (peer["median"] / mt["median"])


def _table(rows, header, markdown):
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(wd) for x, wd in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * wd for wd in widths])] + [line(r) for r in rows])


def _agreement(section, w, res):
    """Compare losses (and gradient probes) across the systems that ran: a wrong peer is a
    meaningless timing."""
    ok = {s: r for s, r in res.items() if r and r.get("status") == "ok" and not r.get("capped")}
    if len(ok) < 2 or (section != "loss_and_grad" and w.online):
        return None
    names = sorted(ok)
    ref = ok[names[0]]
    worst = 0.0
    for s in names[1:]:
        r = ok[s]
        vals = [(r["loss"], ref["loss"])]
        if section == "loss_and_grad":
            vals += [(r["gnorm"], ref["gnorm"])] + list(zip(r["probe"], ref["probe"]))
            scale = max(abs(x) for x in ref["probe"] + [ref["gnorm"]])
            worst = max(worst, max(abs(a - b) / scale for a, b in zip(r["probe"], ref["probe"])))
        worst = max(worst, abs(r["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-300))
    return worst, names


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _header(args, dg):
    import numpy as np
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vers = ["python %s" % platform.python_version(), "numpy %s" % np.__version__]
    for m in ("torch", "jax"):
        try:
            vers.append("%s %s" % (m, __import__(m).__version__))
        except Exception:
            vers.append("%s not installed" % m)
    cmd = "python benchmarks/run.py" + ("" if len(sys.argv) == 1 else " " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]))
    lines = [
        "moetheory benchmark, %s; %d cores (%s); BLAS %s; %d thread(s); command: `%s`" % (
            datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), os.cpu_count(), cpu,
            dg.get("blas", "?"), args.threads, cmd),
        "versions: " + ", ".join(vers),
    ]
    try:
        import moetheory
        with open("/proc/cpuinfo") as f:
            flags = f.read().split("flags", 1)[-1].split("\n", 1)[0].split()
        width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE2"
        lines.append("vector width: the machine has %s%s; moetheory's kernels run the %r "
                     "variant (chosen at run time)" % (width, " + FMA" if "fma" in flags else "",
                                                       moetheory.kernel_isa()))
    except Exception as exc:  # an old build without kernel_isa, or no /proc
        lines.append("vector width: n/a (%s)" % exc)
    la = _loadavg()
    if la is not None:
        lines.append("load average at start: %.2f (1 min)%s" % (la, "" if la < 0.5 else
                     "  WARNING: the machine is busy; with threads == cores PyTorch's OpenMP "
                     "in particular slows down many-fold (oversubscription): rerun when idle"))
    if "openblas32_gflops" in dg:
        lines.append("dgemm %dx%d, %d thread(s): scipy-openblas32 (moetheory's BLAS) %.1f GFLOP/s; "
                     "numpy's BLAS %s GFLOP/s. Limit = GEMM FLOPs of fwd+bwd / the largest "
                     "scipy-openblas32 rate measured up to each section (notes)." % (
                         dg["size"], dg["size"], args.threads, dg["openblas32_gflops"],
                         "%.1f" % dg["numpy_gflops"] if "numpy_gflops" in dg else "n/a"))
    else:
        lines.append("dgemm rate: n/a (%s)" % dg.get("openblas32_error", dg.get("error", "?")))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats: a smoke run")
    ap.add_argument("--threads", type=int, default=None, help="threads for every system "
                    "(default: the cores this process may use)")
    ap.add_argument("--only", default=None, help="comma list of workloads, e.g. W1,W2 "
                    "(a base name also selects its variants)")
    ap.add_argument("--markdown", action="store_true", help="markdown tables for the README")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of systems")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 5; 3 with --quick)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds one system may spend on one workload's timed repeats; past it "
                         "its steps are cut and the time marked * (default 120; 20 with --quick)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for one answer of a worker (default 900)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds of pause before each system's turn, so that the idle threads "
                         "(OpenBLAS, OpenMP, XLA) of the one before have gone to sleep (default 0.5)")
    ap.add_argument("--no-memory", action="store_true", help="skip the W3 memory check")
    ap.add_argument("--log", default=None, help="append the workers' stderr to this file")
    # internal
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memcheck", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.budget is None:
        args.budget = 20.0 if args.quick else 120.0
    if args.timeout is None:
        args.timeout = 900.0
    if args.worker:
        return worker(args)
    if args.memcheck:
        return memcheck(args)

    import workloads as wl

    systems = [s for s in args.systems.split(",") if s in SYSTEMS]
    sections = wl.select(args.only)
    out = print

    # the dgemm rate, in a worker of its own at the run's thread count
    dg = _dgemm(args)
    lines = _header(args, dg)
    rate = dg.get("openblas32_gflops")

    for line in lines:
        out(line + ("  " if args.markdown else ""))
    out("")

    notes = []
    rates = [rate] if rate else []
    for section, ws in sections.items():
        if not ws:
            continue
        again = _dgemm(args).get("openblas32_gflops") if rate else None
        if again:
            rates.append(again)
            rate = max(rates)
        res = run_section(section, ws, systems, args)
        title = ("loss_and_grad: forward + backward, median seconds per call"
                 if section == "loss_and_grad" else
                 "training step: forward + backward + update in a loop, median seconds per step")
        out(("### " if args.markdown else "== ") + title + ("" if args.markdown else " =="))
        out("")
        header = ["workload", "d,E,m,n", "steps", "limit"] + systems
        header += ["%s/mt" % s for s in systems if s != "moetheory"]
        if "moetheory" in systems:
            header.append("mt % of limit")
        rows = []
        for w in ws:
            rw = {s: res[s].get(w.name) for s in systems}
            limit = wl.flops(w) / (rate * 1e9) if rate else None
            steps = w.quick_steps if args.quick else w.steps
            row = [w.name, "%d,%d,%d,%d" % (w.d, w.E, w.m, w.n), str(steps), _fmt_t(limit)]
            row += [_cell(rw[s]) for s in systems]
            row += [_ratio(rw[s], rw.get("moetheory")) for s in systems if s != "moetheory"]
            if "moetheory" in systems:
                m = rw["moetheory"]
                row.append("%.1f%%" % (100 * limit / m["median"])
                           if (limit and m and m.get("status") == "ok") else "n/a")
            rows.append(row)
            # notes: why a cell is not a time, capped runs, agreement, peers' fraction of limit
            for s in systems:
                r = rw[s]
                if r and r.get("status") != "ok":
                    notes.append((s, r["status"], r.get("why", "")))
                elif r and r.get("capped"):
                    notes.append((s, "capped", "%s/%s: %d steps x %d repeats to stay within "
                                  "--budget" % (section, w.name, r["steps"], r["repeats"])))
            ag = _agreement(section, w, rw)
            if ag is not None:
                worst, names = ag
                flag = "OK" if worst <= AGREE_RTOL else "DISAGREE"
                what = "loss and gradient" if section == "loss_and_grad" else "final loss"
                notes.append(("agreement", flag, "%s/%s: %s of %s agree to %.1e relative" % (
                    section, w.name, what, ", ".join(names), worst)))
            if limit and limit >= 1e-3:
                fr = ["%s %.0f%%" % (s, 100 * limit / rw[s]["median"]) for s in systems
                      if rw[s] and rw[s].get("status") == "ok"]
                if fr:
                    notes.append(("limit", "", "%s/%s: fraction of the dgemm limit: %s" % (
                        section, w.name, ", ".join(fr))))
        out(_table(rows, header, args.markdown))
        out("")

    if not args.no_memory and (not args.only or any(w.name == "W3" for ws in sections.values()
                                                     for w in ws)):
        out(("### " if args.markdown else "== ") + "memory: peak RSS of 3 W3 loss_and_grad calls"
            + ("" if args.markdown else " =="))
        out("")
        budget = wl.data_bytes(wl.W3)
        mrows = []
        for s in systems:
            r, rc, err = _spawn(["--memcheck", s, "--threads", str(args.threads)], args.threads,
                                600, args.log)
            r = r[0] if r else {"status": "error", "why": "crashed (rc=%s)" % rc}
            if r.get("status") == "ok":
                mrows.append([s, "%.0f MB" % (r["peak_bytes"] / 1e6),
                              "%.0f MB" % (r["base_bytes"] / 1e6),
                              "%.0f MB" % (budget / 1e6), "%.2f" % r["ratio"],
                              "%.2f" % r["ratio_above_base"]])
            else:
                mrows.append([s, r.get("status")] + ["n/a"] * 4)
                notes.append((s, "memory " + r.get("status", "?"), r.get("why", "")))
        out(_table(mrows, ["system", "peak RSS", "RSS after imports", "X,y,params,grads,acts",
                           "peak/that", "(peak - imports)/that"], args.markdown))
        out("")

    if len(rates) > 1:
        notes.append(("limit", "", "dgemm rates measured in this run (GFLOP/s, in order): %s; "
                      "each section's limit uses the largest measured before it" % ", ".join(
                          "%.1f" % r for r in rates)))
    if notes:
        out("notes:" + ("  " if args.markdown else ""))
        seen = set()
        for s, st, why in notes:
            key = (s, st, why)
            if key in seen:
                continue
            seen.add(key)
            out("- %s%s: %s" % (s, (" " + st) if st else "", why))
        out("")
    out("ratios: peer time / moetheory time (>1: moetheory faster); * = steps cut to the budget."
        + ("" if _loadavg() is None else "  load average at the end: %.2f" % _loadavg()))
    return 0


def _dgemm(args):
    """The dgemm rates, measured in a subprocess at the run's thread count."""
    res, rc, err = _spawn(["--worker", "dgemm", "--threads", str(args.threads)], args.threads,
                          600, args.log)
    if res:
        return res[0]
    return {"error": "rc=%s: %s" % (rc, (err.strip().splitlines() or ["no output"])[-1])}


if __name__ == "__main__":
    sys.exit(main())
