"""End to end under a real SLURM: launch/hawada.sbatch submitted with `sbatch --wait` to a one-node
cluster (munged, slurmctld, slurmd) that this test starts on localhost as root, in a temporary
directory, and stops again by pid whatever happens. The job runs every stage on 2 ranks; a second
job with another budget reuses the teacher cache; a third (under mpirun, then under srun) is sent
SIGTERM mid-training as --signal=B:TERM would, checkpoints, requeues itself and finishes. Skipped
without the SLURM and munge daemons or without root."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Skipped at module level, so that pytest collects nothing and exits 5, which ctest reports as skipped.
_missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "sinfo", "squeue", "mpirun")
            if shutil.which(t) is None]
if _missing:
    pytest.skip(f"not installed: {', '.join(_missing)} (Debian: apt-get install slurm-wlm munge)",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("starting munged, slurmctld and slurmd (SlurmUser=root) needs root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SBATCH_SCRIPT = REPO / "launch" / "hawada.sbatch"
CLI = os.path.abspath(os.environ["HAWADA_CLI"]) if os.environ.get("HAWADA_CLI") else ""
if not CLI or not os.path.exists(CLI):
    pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline", allow_module_level=True)
DEFAULT_STAGES = ["teacher_cache", "train_gates", "reduce_gates", "rounding_search", "export"]
JOB_TIMEOUT = 420  # seconds for one sbatch --wait (a requeue waits ~20 s before the job restarts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=60):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError as e:
        return f"<{path}: {e}>"


class Slurm:
    """A one-node SLURM cluster on localhost; every daemon runs in the foreground as our child."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.procs = []  # (name, Popen), in start order
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def logs(self):
        return "\n".join(f"--- {p.name}:\n{tail(p)}" for p in sorted((self.root / "log").glob("*.log")))

    def start(self):
        r = self.root
        os.chmod(r, 0o755)  # munged: every directory above its socket must be searchable by all
        for d, mode in (("munge", 0o700), ("run", 0o755), ("state", 0o700), ("spool", 0o755), ("log", 0o755)):
            (r / d).mkdir(mode=mode)
        key = r / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(128))
        os.close(fd)
        sock = r / "run" / "munge.sock"
        # munged with its own key, socket, pid, seed and log files: nothing under /etc or /run is touched.
        self._spawn("munged", ["munged", "-F", f"--key-file={key}", f"--socket={sock}",
                               f"--pid-file={r / 'run' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'munged.seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        self._wait(lambda: sock.exists(), 20, "munged to create its socket")
        cpus = os.cpu_count() or 1
        # cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
        self.conf.write_text(f"""\
ClusterName=hawadae2e
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.host} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])

        def idle():
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
            return p.returncode == 0 and p.stdout.split() == [self.host, "idle"]

        self._wait(idle, 60, f"sinfo to show node {self.host} idle")

    def _spawn(self, name, argv):
        out = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs.append((name, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                  start_new_session=True)))
        out.close()

    def _wait(self, ready, seconds, what):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited {p.returncode} while waiting for {what}\n"
                                       f"{tail(self.root / 'log' / (name + '.stdout'))}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {seconds} s waiting for {what}\n{self.logs()}")

    def stop(self):
        """Cancels what is left of our jobs, then stops slurmd, slurmctld and munged by pid."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
            time.sleep(1)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)

    def squeue_state(self, job):
        p = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], env=self.env, capture_output=True, text=True)
        return p.stdout.strip()


@pytest.fixture(scope="module")
def slurm(request):
    # Not under pytest's basetemp: munged wants every directory above its socket searchable by all
    # (pytest makes its directories 0700), and a socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="hawada-slurm-", dir="/tmp"))
    cluster = Slurm(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if request.session.testsfailed:
            print(f"\nSLURM state and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny demo model and tokens, made as launch/demo.sh makes them."""
    d = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, str(REPO / "launch" / "make_tiny_models.py"), str(d), "--hidden", "64",
                    "--layers", "4", "--heads", "8", "--kv-heads", "2", "--ffn", "256", "--vocab", "512",
                    "--tokens", "8192"], check=True, capture_output=True)
    return d


def write_config(demo, work, name, target, steps=20, checkpoint_every=10):
    run_dir = work / name
    cfg = work / f"{name}.toml"
    cfg.write_text(f"""\
[run]
dir = "{run_dir}"
seed = 0
threads_per_rank = 1

[model]
path = "{demo / 'tiny-llama'}"
dtype = "fp32"

[data]
format = "tokens_bin"
path = "{demo / 'tiny-tokens.bin'}"
seq_len = 32
samples = 64

[teacher]
cache_root = "{work / 'teacher-cache'}"
top_k = 16

[train]
steps = {steps}
warmup = 5
micro_batch = 4
checkpoint_every = {checkpoint_every}
holdout = 16

[budget]
metric = "params"
target = {target}

[search]
ffn_multiple = 8
hidden_multiple = 8

[export]
name = "demo-slim"
""")
    return cfg, run_dir


def stages():
    """The stage list from `hawada-pipeline --help` ("Stages, in order: a, b, ...")."""
    p = subprocess.run([CLI, "--help"], capture_output=True, text=True)
    m = re.search(r"Stages, in order: ([a-z_, ]+)\.", p.stdout + p.stderr)
    return [s.strip() for s in m.group(1).split(",")] if m else DEFAULT_STAGES


def submit(slurm, cfg, log, work, on_running=None, env=None):
    """sbatch --wait launch/hawada.sbatch with HAWADA_CONFIG=cfg; returns (exit code, job id).
    on_running(job_id) is called once the job log shows output, while sbatch waits."""
    env = {**slurm.env, "HAWADA_CONFIG": str(cfg), "HAWADA_TEACHER_CACHE": str(work / "teacher-cache"),
           "OMP_NUM_THREADS": "1", **(env or {})}
    # The sbatch script finds the binary in the repo it was submitted from; a build elsewhere is named.
    if os.path.realpath(CLI) != os.path.realpath(REPO / "build" / "pipeline" / "hawada-pipeline"):
        env["HAWADA_BIN"] = CLI
    p = subprocess.Popen(["sbatch", "--wait", "--export=ALL", "--ntasks=2", f"--output={log}",
                          f"--job-name={cfg.stem}", str(SBATCH_SCRIPT)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = None
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        # sbatch's "Submitted batch job N" may sit in its stdout buffer until it exits: ask squeue.
        while job is None and p.poll() is None and time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h", "-n", cfg.stem, "-o", "%i"], env=slurm.env, capture_output=True,
                               text=True)
            job = int(q.stdout.split()[0]) if q.returncode == 0 and q.stdout.split() else None
            time.sleep(0.2)
        if on_running:
            assert job is not None, f"job {cfg.stem} not found in squeue; job log {log}:\n{tail(log)}\n{slurm.logs()}"
            on_running(job)
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
    except BaseException:
        subprocess.run(["scancel", "-n", cfg.stem], env=slurm.env, capture_output=True)
        p.kill()
        p.communicate()
        raise
    m = re.search(r"Submitted batch job (\d+)", out)
    assert m, f"sbatch did not submit: {out}{err}\n{slurm.logs()}"
    assert job in (None, int(m.group(1))), f"squeue showed job {job}, sbatch submitted {m.group(1)}"
    job = int(m.group(1))
    return p.returncode, job, err


def assert_all_stages_done(log, run_dir, text):
    for s in stages():
        assert re.search(rf"\] {s}: (done in|skipped, its marker matches)", text), \
            f"stage {s} did not finish; job log {log}:\n{tail(log)}"
        assert (run_dir / "stages" / f"{s}.done").is_file(), f"no marker for stage {s}; job log {log}:\n{tail(log)}"


def assert_loads(log, run_dir):
    export = run_dir / "export" / "demo-slim"
    assert (export / "config.json").is_file(), f"no {export}/config.json; job log {log}:\n{tail(log)}"
    model = transformers.AutoModelForCausalLM.from_pretrained(export)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 512) and torch.isfinite(logits).all(), f"export {export}; job log {log}"
    return model


def test_sbatch_runs_every_stage_then_a_second_budget_reuses_the_teacher_cache(slurm, demo, tmp_path):
    cfg, run_dir = write_config(demo, tmp_path, "first", target=0.6)
    log = tmp_path / "first.out"
    rc, job, err = submit(slurm, cfg, log, tmp_path)
    text = log.read_text() if log.exists() else ""
    assert rc == 0, f"job {job} exited {rc} (sbatch: {err.strip()}); job log {log}:\n{tail(log)}\n{slurm.logs()}"
    assert "teacher_cache: teacher forward on 64 samples" in text, f"job log {log}:\n{tail(log)}"
    assert_all_stages_done(log, run_dir, text)
    dense = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(demo / "tiny-llama").parameters())
    slim = sum(p.numel() for p in assert_loads(log, run_dir).parameters())
    assert slim < dense, f"export has {slim} parameters, the dense model {dense}; job log {log}"

    # Another budget, a new run directory, the same teacher cache root: no teacher forward.
    cfg2, run_dir2 = write_config(demo, tmp_path, "second", target=0.8)
    log2 = tmp_path / "second.out"
    rc, job, err = submit(slurm, cfg2, log2, tmp_path)
    text2 = log2.read_text() if log2.exists() else ""
    assert rc == 0, f"job {job} exited {rc} (sbatch: {err.strip()}); job log {log2}:\n{tail(log2)}\n{slurm.logs()}"
    assert "reused the complete cache" in text2 and "no teacher forward" in text2, \
        f"the teacher cache was not reused; job log {log2}:\n{tail(log2)}"
    assert "teacher forward on" not in text2, f"job log {log2}:\n{tail(log2)}"
    assert_all_stages_done(log2, run_dir2, text2)
    slim2 = sum(p.numel() for p in assert_loads(log2, run_dir2).parameters())
    assert slim < slim2 < dense, f"budgets 0.6 and 0.8 gave {slim} and {slim2} of {dense} parameters; job log {log2}"


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_sigterm_checkpoints_requeues_and_the_requeued_job_finishes(slurm, demo, tmp_path, launcher):
    env = {"HAWADA_LAUNCHER": launcher}
    if launcher == "srun":
        # Open MPI direct-launched by srun needs SLURM's PMIx plugin.
        p = subprocess.run(["srun", "--mpi=list"], env=slurm.env, capture_output=True, text=True)
        if "pmix" not in p.stdout + p.stderr:
            pytest.skip(f"srun has no PMIx plugin (srun --mpi=list: {(p.stdout + p.stderr).strip()})")
        env["HAWADA_LAUNCHER_ARGS"] = "--mpi=pmix"
    # Enough steps that training is still running when the batch shell gets SIGTERM.
    cfg, run_dir = write_config(demo, tmp_path, f"preempted-{launcher}", target=0.6, steps=300, checkpoint_every=1000)
    log = tmp_path / f"preempted-{launcher}.out"

    def term_during_training(job):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if re.search(r"train_gates: \d+ steps of", text):
                break
            assert slurm.squeue_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), \
                f"job {job} ended before training started; job log {log}:\n{tail(log)}"
            time.sleep(0.2)
        else:
            raise AssertionError(f"training did not start within 120 s; job log {log}:\n{tail(log)}")
        time.sleep(1.0)
        # What --signal=B:TERM@120 does before the time limit: SIGTERM to the batch shell only.
        p = subprocess.run(["scancel", "--batch", "--signal=TERM", str(job)], env=slurm.env,
                           capture_output=True, text=True)
        assert p.returncode == 0, f"scancel: {p.stderr}"

    rc, job, err = submit(slurm, cfg, log, tmp_path, on_running=term_during_training, env=env)
    text = log.read_text() if log.exists() else ""
    assert rc == 0, f"job {job} exited {rc} (sbatch: {err.strip()}); job log {log}:\n{tail(log, 80)}\n{slurm.logs()}"
    m = re.search(r"SIGTERM: checkpointed step (\d+) of 300", text)
    assert m, f"no checkpoint on SIGTERM; job log {log}:\n{tail(log, 80)}"
    launched = "mpirun -np 2 " if launcher == "mpirun" else "srun --mpi=pmix "
    assert launched in text, f"job log {log}:\n{tail(log, 80)}"
    assert f"requeueing job {job}" in text, f"job log {log}:\n{tail(log, 80)}"
    assert "restart 1)" in text, f"the job did not run again after the requeue; job log {log}:\n{tail(log, 80)}"
    assert f"resumed from step {m.group(1)} of 300" in text, f"job log {log}:\n{tail(log, 80)}"
    assert "teacher_cache: skipped, its marker matches" in text, f"job log {log}:\n{tail(log, 80)}"
    assert_all_stages_done(log, run_dir, text)
    assert_loads(log, run_dir)
