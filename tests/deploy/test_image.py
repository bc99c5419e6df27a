"""The container image, built by scripts/build-image from deploy/Dockerfile, runs the demo as non-root.

Needs root: the test starts its own Docker engine (``dockerd --storage-driver=vfs --iptables=false
--bridge=none``, on a private socket, stopped at the end) and builds the base image
``debian:bookworm-slim`` with debootstrap (no image registry is reachable here). What is slow to make is
kept in ``$KMS_DEPLOY_CACHE`` (default /var/cache/kms-agent-test): the debootstrap tarball, the
dependency wheels and the engine's data root (image layers), so a second run rebuilds only what changed.
Then it checks, on the images users get:

* ``kms-agent demo --json`` in a container with no network, a read-only root, no capabilities and the
  image's default user: exit 0, ``"ok": true``, and every process in it has a non-zero uid;
* deploy/docker-compose.yml (with docker-compose): pcscd in its container shares its socket with the
  agent's, which reaches it as uid 10001 (``kms-agent doctor``); and, once ``agent/service/server.py``
  exists, ``kms-agent serve`` in the compose stack answers ``GET /health`` on its Unix socket.

Under CI=true as root it never skips: a missing docker.io, debootstrap or docker-compose is installed
with apt-get, and a failure to install them fails the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy")]

CACHE = Path(os.environ.get("KMS_DEPLOY_CACHE", "/var/cache/kms-agent-test"))
IMAGE = "kms-agent:latest"
UID = "10001"
#: command -> the Debian package that provides it
TOOLS = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
}
ON_CI = os.environ.get("CI") == "true"


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _ensure_tools() -> None:
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            pytest.fail(
                f"could not install {' '.join(missing)} with apt-get ({' '.join(args)}):\n{proc.stderr[-2000:]}"
            )
    still = [cmd for cmd in TOOLS if shutil.which(cmd) is None]
    if still:
        pytest.fail(f"installed {' '.join(missing)} but still missing: {' '.join(still)}")


class Engine:
    """A private dockerd: its own socket, exec root and pid file; image layers in the cache."""

    def __init__(self, run: Path, data: Path) -> None:
        self.run, self.data = run, data
        self.sock = run / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        self.log = run / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            "dockerd",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={self.data}",
            f"--exec-root={self.run / 'exec'}",
            f"--pidfile={self.run / 'dockerd.pid'}",
            f"--host=unix://{self.sock}",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.docker("info", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd did not answer within 60 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def docker(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("needs root: starts its own dockerd and debootstraps the base image")
    _ensure_tools()
    CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Unix socket paths are short: keep the engine's sockets under /tmp, not under pytest's tmp_path.
    run = Path(tempfile.mkdtemp(prefix="kms-dockerd-", dir="/tmp"))
    # One build at a time on this machine (two checkouts' suites would share the cache), and an engine
    # of our own each time: its data root is new and private to this process. Layers left by earlier
    # runs made the legacy builder lose intermediate stages; the slow parts (the debootstrap tarball,
    # the wheels) stay cached beside it.
    lock = os.open(CACHE / ".build.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    for stale in CACHE.glob("docker-root*"):
        shutil.rmtree(stale, ignore_errors=True)
    data = CACHE / f"docker-root-{os.getpid()}"
    engine = Engine(run, data)
    try:
        try:
            engine.start()
        except RuntimeError:
            # A data root left damaged by a killed run: start over from an empty one.
            engine.stop()
            shutil.rmtree(data, ignore_errors=True)
            engine.start()
        yield engine
    except RuntimeError as exc:
        _unavailable(f"no Docker engine could be started here: {exc}")
    finally:
        engine.stop()
        shutil.rmtree(data, ignore_errors=True)  # vfs keeps full copies of every layer: do not let them pile up
        # dockerd leaves its network namespace bind-mounted under the exec root: unmount, then remove.
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{run}/")), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
        os.close(lock)


@pytest.fixture(scope="module")
def images(engine: Engine) -> Iterator[float]:
    """Builds both images with scripts/build-image; yields how long that took."""

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts/build-image"), "--cache-dir", str(CACHE)],
            capture_output=True,
            text=True,
            env=engine.env,
            timeout=1200,
        )

    started = time.monotonic()
    proc = build()
    if proc.returncode != 0:
        # Once more from an empty engine: the vfs engine here has failed transiently under load
        # (a vanished layer directory). A second failure is real and fails the test.
        print(f"\nscripts/build-image failed once; again on a fresh engine:\n{proc.stderr[-2000:]}")
        engine.stop()
        shutil.rmtree(engine.data, ignore_errors=True)
        engine.start()
        proc = build()
    took = time.monotonic() - started
    (CACHE / "build-image.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"scripts/build-image failed:\n{proc.stderr[-4000:]}"
    print(f"\nscripts/build-image: {took:.0f} s\n{proc.stderr}")
    yield took


def test_image_runs_the_demo_as_non_root(engine: Engine, images: float) -> None:
    config = json.loads(engine.docker("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}", config["User"]

    name = f"kms-demo-{os.getpid()}"
    engine.docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        IMAGE,
        "kms-agent",
        "demo",
        "--json",
    )
    try:
        uids: set[str] = set()
        top_error = ""
        while engine.docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true":
            # docker top runs the host's ps and keeps the container's pids: it needs the pid column.
            top = engine.docker("top", name, "-o", "pid,uid,args", check=False)
            top_error = top.stderr if top.returncode else top_error
            for line in top.stdout.splitlines()[1:]:
                _pid, uid, args = line.split(None, 2)
                if "kms-agent" in args or "python" in args:
                    uids.add(uid)
            time.sleep(0.2)
        code = engine.docker("wait", name).stdout.strip()
        logs = engine.docker("logs", name)
    finally:
        engine.docker("rm", "--force", name, check=False)
    assert code == "0", f"demo exited {code}:\n{logs.stderr[-3000:]}"
    demo = json.loads(logs.stdout)
    assert demo["ok"] is True, [s for s in demo["steps"] if not s["ok"]]
    assert uids, f"the demo finished before `docker top` saw it {top_error}"
    assert uids == {UID}, f"processes in the container ran as uids {uids}"


def _compose_file(tmp: Path) -> Path:
    """deploy/docker-compose.yml without the host's USB bus and udev database, which this machine lacks."""
    text = (REPO / "deploy/docker-compose.yml").read_text()
    lines = [line for line in text.splitlines() if not line.strip().startswith(("- /dev/bus/usb:", "- /run/udev:"))]
    assert len(lines) == len(text.splitlines()) - 2, (
        "deploy/docker-compose.yml no longer mounts /dev/bus/usb, /run/udev"
    )
    path = tmp / "docker-compose.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


_HEALTH = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect("/var/lib/kms-agent/agent.sock")
s.sendall(b"GET /health HTTP/1.1\\r\\nHost: kms-agent\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode(errors="replace"))
sys.exit(0 if data.startswith(b"HTTP/1.1 200") else 1)
"""


def test_compose_shares_pcscd_and_serves(engine: Engine, images: float, tmp_path: Path) -> None:
    project = f"kmstest{os.getpid()}"
    compose_file = _compose_file(tmp_path)

    def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--ansi", "never", "-p", project, "-f", str(compose_file), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=engine.env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        return proc

    try:
        compose("up", "--detach", "pcscd")
        # The agent's service definition (user, read-only root, no network, volumes) with other commands.
        assert compose("run", "--rm", "--no-deps", "kms-agent", "id", "-u").stdout.strip() == UID
        doctor = compose("run", "--rm", "--no-deps", "kms-agent", "kms-agent", "doctor", "--json", check=False)
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["pcscd"]["ok"] is True, checks["pcscd"]

        if not (REPO / "agent/service/server.py").exists():
            return  # no `kms-agent serve` in this tree yet
        init = [
            "run", "--rm", "--no-deps", "-e", "KMS_AGENT_SIM_TOUCH=auto", "kms-agent",
            "kms-agent", "init", "--operator", "alice=sim:alice", "--operator", "bob=sim:bob",
            "--quorum", "2", "--recovery-out", "/tmp/shares",
        ]  # fmt: skip
        compose(*init)
        compose("up", "--detach", "kms-agent")
        deadline = time.monotonic() + 60
        while True:
            health = compose("exec", "-T", "kms-agent", "python3", "-c", _HEALTH, check=False)
            if health.returncode == 0:
                break
            restarts = engine.docker("inspect", "--format", "{{.RestartCount}}", f"{project}_kms-agent_1", check=False)
            if time.monotonic() > deadline or restarts.stdout.strip() not in ("", "0"):
                logs = compose("logs", "--tail", "50", "kms-agent", check=False).stdout
                raise AssertionError(
                    f"kms-agent serve: GET /health on agent.sock did not answer 200:\n{health.stdout}\n{logs}"
                )
            time.sleep(1)
        assert compose("exec", "-T", "kms-agent", "id", "-u").stdout.strip() == UID
    finally:
        with contextlib.suppress(Exception):
            compose("down", "--volumes", "--timeout", "30", check=False)
