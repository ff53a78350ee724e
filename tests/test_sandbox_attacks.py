"""Red team: what code in the kernel tries against the host, in an isolated local session and in a session
on a Kernel Gateway started from sandbox/ (with this suite's limits).

Every attack checks the observation the model would read, verifies the host afterwards, and that the next
run of the same session works. Needs isolation (root on Linux); skipped where it is not available.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from glm_agent.errors import InterpreterError
from glm_agent.interpreter import CodeInterpreter, KernelPool, Limits, detect_isolation
from glm_agent.interpreter._limits import MiB
from tests._data import REPO
from tests._helpers import wait_until
from tests.gateway_server import GatewayServer

pytestmark = [
    pytest.mark.skipif(not detect_isolation().enabled, reason=f"needs isolation: {detect_isolation().reason}"),
    pytest.mark.kernel,
]

LIMITS = Limits(max_processes=64, total_memory_bytes=768 * MiB, workspace_bytes=64 * MiB)
SECRETS = {
    "OPENAI_API_KEY": "sk-redteam-openai",
    "HF_TOKEN": "hf_redteam_token",
    "MY_DB_PASSWORD": "redteam-db-password",
    "FOO": "redteam-foo",
}
KINDS = ["local", pytest.param("gateway", marks=pytest.mark.gateway)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway with this suite's limits in its kernel spec and the secrets in its own environment."""
    specs = tmp_path_factory.mktemp("specs")
    spec = json.loads((REPO / "sandbox/kernels/glm-agent-python/kernel.json").read_text())
    argv = spec["argv"]
    for name, value in (
        ("--max-processes", LIMITS.max_processes),
        ("--total-memory-bytes", LIMITS.total_memory_bytes),
        ("--workspace-bytes", LIMITS.workspace_bytes),
    ):
        argv[argv.index(name) + 1] = str(value)
    argv[argv.index("--isolate") + 1] = "required"
    (specs / "kernels" / "glm-agent-python").mkdir(parents=True)
    (specs / "kernels" / "glm-agent-python" / "kernel.json").write_text(json.dumps(spec))
    server = GatewayServer(env={"GLM_AGENT_KERNEL_SPECS": str(specs), **SECRETS})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=KINDS)
def session(request, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    if request.param == "gateway":
        gateway = request.getfixturevalue("gateway")
        interpreter = CodeInterpreter(gateway=gateway.url, token=gateway.token, timeout=30)
    else:
        interpreter = CodeInterpreter(limits=LIMITS, timeout=30, isolate=True)
    try:
        assert interpreter.isolation.enabled, interpreter.isolation
        yield interpreter
    finally:
        interpreter.close()


def still_works(session: CodeInterpreter) -> None:
    """The session's next run works (the kernel lived on, or was restarted and says so)."""
    result = session.run("print(6 * 7)")
    assert result.stdout == "42\n", result.observation


def _ok_lines(session: CodeInterpreter, code: str) -> list[str]:
    result = session.run(code)
    assert result.status == "ok", result.observation
    return result.stdout.splitlines()


TRY_READ = """
for path in {paths!r}:
    try:
        print(path, 'READ', open(path).read()[:40])
    except OSError as exc:
        print(path, type(exc).__name__, exc.strerror)
"""


# -- the filesystem ---------------------------------------------------------------------------------------
def test_files_in_home_tmp_and_etc_shadow_are_absent(session, tmp_path):
    secret = f"secret-{uuid.uuid4().hex}"
    in_home = Path.home() / f".glm-agent-redteam-{uuid.uuid4().hex[:8]}"
    in_tmp = tmp_path / "host-secret.txt"
    paths = [str(in_home), str(in_tmp), "/etc/shadow", "/etc/gshadow", str(Path(__file__).resolve())]
    try:
        in_home.write_text(secret)
        in_tmp.write_text(secret)
        result = session.run(TRY_READ.format(paths=paths))
        assert secret not in result.observation
        for line in result.stdout.splitlines():
            assert line.endswith("FileNotFoundError No such file or directory"), line
        listing = session.run("import os\nprint(sorted(os.listdir('/')), sorted(os.listdir('/etc')))").stdout
        for absent in ("'home'", "'srv'", "'var'", "'opt'", "'boot'", "'sys'", "'shadow'", "'sudoers'"):
            assert absent not in listing, listing
        assert in_home.read_text() == secret and in_tmp.read_text() == secret  # the host's files are intact
    finally:
        in_home.unlink(missing_ok=True)
    still_works(session)


def test_writes_outside_the_workspace_fail(session):
    paths = ["/etc/x", "/usr/x", "/x", "/root/x", "/usr/lib/x", "/dev/x", "/proc/sys/vm/drop_caches"]
    code = (
        "import sys\n"
        f"for path in {paths!r} + [sys.prefix + '/x']:\n"
        "    try:\n"
        "        open(path, 'w').write('1')\n"
        "        print(path, 'WROTE')\n"
        "    except OSError as exc:\n"
        "        print(path, exc.strerror)\n"
    )
    lines = _ok_lines(session, code)
    assert len(lines) == len(paths) + 1
    for line in lines:
        assert line.endswith(("Read-only file system", "No such file or directory")), line
    assert not Path("/x").exists() and not Path("/etc/x").exists() and not Path("/usr/x").exists()
    assert _ok_lines(session, "open('/mnt/data/ok.txt', 'w').write('1')\nopen('/tmp/ok', 'w').write('1')") == []
    still_works(session)


def test_a_symlink_in_the_workspace_reaches_nothing_on_the_host(session, tmp_path):
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text("host secret")
    out_dir = tmp_path / "elsewhere"
    out_dir.mkdir()
    code = (
        "import os\n"
        f"os.symlink({str(secret_file)!r}, '/mnt/data/link.txt')\n"
        "os.symlink('/etc/shadow', '/mnt/data/shadow.png')\n"
        f"os.symlink({str(out_dir)!r}, '/mnt/data/outputs')\n"
        "for path in ('/mnt/data/link.txt', '/mnt/data/shadow.png'):\n"
        "    try:\n"
        "        print(open(path).read())\n"
        "    except OSError as exc:\n"
        "        print(exc.strerror)\n"
        "from IPython.display import Image, display\n"
        "display(Image(data=bytes.fromhex('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489'"
        "'0000000d4944415478da63f8cfc0f01f0005000201a5ddd5b10000000049454e44ae426082')))\n"
    )
    result = session.run(code)
    assert result.stdout == "No such file or directory\nNo such file or directory\n", result.observation
    assert "host secret" not in result.observation
    assert result.files == []  # links are never listed (nor read) as files
    assert list(out_dir.iterdir()) == []  # the image was not written through the link
    if session.backend.workspace is not None:  # local: the host never writes through a link the code made
        session.upload(b"uploaded", name="link.txt")
        assert secret_file.read_text() == "host secret"
        assert (session.workspace / "link.txt").read_bytes() == b"uploaded"
        assert not (session.workspace / "link.txt").is_symlink()
        assert result.images and not result.images[0].is_relative_to(out_dir)
    still_works(session)


# -- processes ----------------------------------------------------------------------------------------------
def test_proc_shows_only_the_sandbox_and_host_processes_are_out_of_reach(session):
    code = (
        "import os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "cmdlines = [open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode() for p in pids\n"
        "            if os.path.exists(f'/proc/{p}/cmdline')]\n"
        "print(os.getpid(), os.getppid(), max(pids))\n"
        "print(any('pytest' in c or 'kernelgateway' in c for c in cmdlines))\n"
        f"try:\n    os.kill({os.getpid()}, 0)\n    print('signalled the host')\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
    )
    lines = _ok_lines(session, code)
    own_pid, parent, highest = map(int, lines[0].split())
    assert (own_pid, parent) == (1, 0) and highest < 100
    assert lines[1] == "False"
    assert lines[2] in ("ProcessLookupError", "PermissionError")
    assert psutil.pid_exists(os.getpid())
    still_works(session)


def test_ptrace_setuid_chroot_mount_and_unshare_are_refused(session):
    code = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, call):
    result = call()
    print(name, 'OK' if result == 0 else os.strerror(ctypes.get_errno()))
attempt('ptrace-parent', lambda: libc.ptrace(16, os.getppid() or 1, None, None))   # PTRACE_ATTACH
attempt('ptrace-host', lambda: libc.ptrace(16, HOST_PID, None, None))
attempt('setuid', lambda: libc.setuid(1000))
attempt('chroot', lambda: libc.chroot(b'/tmp'))
attempt('mount', lambda: libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))
attempt('unshare-user', lambda: libc.unshare(0x10000000))
attempt('unshare-mount', lambda: libc.unshare(0x00020000))
status = dict(line.split(':\t') for line in open('/proc/self/status').read().splitlines() if ':\t' in line)
print(status['CapEff'], status['CapBnd'], status['NoNewPrivs'], status['Seccomp'])
import subprocess
print(subprocess.run(['unshare', '-U', 'true'], capture_output=True).returncode != 0)
""".replace("HOST_PID", str(os.getpid()))
    lines = _ok_lines(session, code)
    verdicts = dict(line.split(" ", 1) for line in lines[:7])
    assert all(verdict != "OK" for verdict in verdicts.values()), verdicts
    assert verdicts["chroot"] == verdicts["mount"] == verdicts["unshare-user"] == "Operation not permitted"
    assert lines[7] == "0000000000000000 0000000000000000 1 2"  # no capabilities, no_new_privs, seccomp filter
    assert lines[8] == "True"
    still_works(session)


@pytest.mark.slow
def test_a_fork_bomb_stops_at_the_process_limit(session):
    code = """
import os, time
started = 0
try:
    while True:
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    os.fork()
            except OSError:
                pass
            time.sleep(120)
            os._exit(0)
        started += 1
except OSError as exc:
    print('fork failed:', exc.strerror)
"""
    host_before = len(psutil.pids())
    result = session.run(code)
    assert "fork failed: Resource temporarily unavailable" in result.stdout, result.observation
    assert f"limit of {LIMITS.max_processes} processes and threads was reached" in result.observation
    threads = session.run(
        "import threading, time\nfor _ in range(100):\n    threading.Thread(target=time.sleep, args=(3,)).start()"
    )
    assert "can't start new thread" in threads.observation
    assert threads.observation.count("processes and threads was reached") == 1, threads.observation
    assert len(psutil.pids()) <= host_before + LIMITS.max_processes + 5  # bounded on the host
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still starts processes
    still_works(session)
    session.restart()  # ends the sleepers
    still_works(session)


@pytest.mark.slow
def test_after_a_killed_fork_bomb_the_next_cell_works_and_says_what_was_cleaned(session):
    bomb = """
import os, signal, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print('stopped at', len(children), exc.strerror)
"""
    filled = session.run(bomb)
    assert "Resource temporarily unavailable" in filled.stdout, filled.observation
    killed = session.run(
        "for pid in children:\n    os.kill(pid, signal.SIGKILL)\ntime.sleep(1)\nprint('killed', len(children))"
    )
    assert "killed" in killed.stdout, killed.observation  # killed, never waited for: zombies hold the limit
    after = session.run(
        "import threading\nt = threading.Thread(target=print, args=('a thread ran',))\nt.start(); t.join()"
    )
    assert "a thread ran" in after.stdout, after.observation
    assert "child process(es) that had ended without being waited for were cleaned up" in after.observation
    still_works(session)


@pytest.mark.slow
def test_ten_processes_over_the_total_memory_limit_are_killed(session):
    code = """
import os, time
children = []
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (150 * 1024 * 1024)   # under the per-process limit, over the total together
        time.sleep(3)
        os._exit(0)
    children.append(pid)
killed = sum(os.WIFSIGNALED(os.waitpid(pid, 0)[1]) for pid in children)
print('killed', killed)
"""
    result = session.run(code)
    assert "memory limit of 0.75 GiB (all its processes together) was reached" in result.observation or (
        result.status == "died" and "memory limit" in result.observation
    ), result.observation
    if result.status == "ok":
        assert int(result.stdout.split()[1]) >= 1
    still_works(session)


def test_filling_the_workspace_stops_at_its_size(session):
    code = """
chunk = b'x' * (1024 * 1024)
written = 0
try:
    with open('/mnt/data/big.bin', 'wb') as fh:
        for _ in range(200):
            fh.write(chunk)
            written += 1
except OSError as exc:
    print('stopped after', written, 'MiB:', exc.strerror)
"""
    result = session.run(code)
    stopped = result.stdout + result.observation
    assert "No space left on device" in stopped, result.observation
    assert "hold at most 64 MiB together" in result.observation or "stopped after" in result.stdout
    written = int(result.stdout.split()[2]) if result.stdout else 0
    assert written <= 64
    tmp = session.run("open('/tmp/more.bin', 'wb').write(b'x' * 32 * 1024 * 1024)")  # /tmp shares the budget
    assert "No space left on device" in tmp.observation, tmp.observation
    assert _ok_lines(session, "import os\nos.remove('/mnt/data/big.bin')\nprint('freed')") == ["freed"]
    assert _ok_lines(session, "open('/tmp/more.bin', 'wb').write(b'x' * 32 * 1024 * 1024)\nprint('ok')") == ["ok"]
    still_works(session)


# -- secrets and the network -----------------------------------------------------------------------------
def test_the_hosts_secrets_are_not_in_the_environment(session):
    result = session.run("import os\nprint(sorted(os.environ.items()))")
    for name, value in SECRETS.items():
        assert name not in result.stdout and value not in result.stdout, result.stdout
    for name in ("KG_AUTH_TOKEN", "GLM_AGENT_GATEWAY_TOKEN", "PYTHONPATH", "VIRTUAL_ENV"):
        assert f"'{name}'" not in result.stdout
    assert "('HOME', '/mnt/data')" in result.stdout
    still_works(session)


@pytest.mark.parametrize("kind", KINDS)
def test_env_passes_only_what_the_caller_chose(kind, request, monkeypatch):
    monkeypatch.setenv("MY_SECRET_TOKEN", "not-for-the-kernel")
    where = {"isolate": True}
    if kind == "gateway":
        gateway = request.getfixturevalue("gateway")
        where = {"gateway": gateway.url, "token": gateway.token}
    with CodeInterpreter(env={"MY_SETTING": "on"}, timeout=30, **where) as chosen:
        code = "import os\nprint(os.environ['MY_SETTING'], os.environ.get('MY_SECRET_TOKEN'))"
        assert chosen.run(code).stdout == "on None\n"


def test_tcp_udp_and_unix_sockets_of_the_host_are_unreachable(session, tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    unix_path = tmp_path / "host.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen(1)
    abstract = socket.socket(socket.AF_UNIX)
    abstract_name = f"\0glm-agent-redteam-{uuid.uuid4().hex}"
    abstract.bind(abstract_name)
    abstract.listen(1)
    try:
        code = f"""
import socket
def attempt(name, make, target, udp=False):
    try:
        with make() as s:
            s.settimeout(2)
            if udp:
                s.sendto(b'leak', target)
            else:
                s.connect(target)
        print(name, 'CONNECTED')
    except OSError as exc:
        print(name, type(exc).__name__)
attempt('tcp', socket.socket, ('127.0.0.1', {tcp.getsockname()[1]}))
attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ('127.0.0.1', {udp.getsockname()[1]}), True)
attempt('unix', lambda: socket.socket(socket.AF_UNIX), {str(unix_path)!r})
attempt('abstract', lambda: socket.socket(socket.AF_UNIX), {abstract_name!r})
attempt('internet', socket.socket, ('1.1.1.1', 53))
"""
        lines = _ok_lines(session, code)
        assert lines == [
            "tcp OSError",
            "udp OSError",
            "unix FileNotFoundError",
            "abstract ConnectionRefusedError",
            "internet OSError",
        ], lines
        with pytest.raises(TimeoutError):
            udp.recvfrom(16)
    finally:
        for sock in (tcp, udp, unix, abstract):
            sock.close()
    still_works(session)


# -- figures and files -------------------------------------------------------------------------------------
def test_a_figure_shown_under_agg_is_one_image(session):
    result = session.run(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    )
    assert result.status == "ok", result.observation
    assert result.observation == "```result\n[Image]\n```"
    assert len(result.images) == 1 and result.images[0].read_bytes().startswith(b"\x89PNG")
    assert session.run("print(len(plt.get_fignums()))").stdout == "0\n"  # shown and closed, as inline does


def test_a_saved_figure_is_a_listed_file_and_an_image(session):
    result = session.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.savefig('/mnt/data/chart.png')\nplt.close()\n"
        "open('/mnt/data/table.csv', 'w').write('a,b\\n1,2\\n')"
    )
    assert result.files == ["/mnt/data/chart.png", "/mnt/data/table.csv"]
    assert "[Files written in /mnt/data: chart.png, table.csv]" in result.observation
    assert "[Image]" in result.observation and len(result.images) == 1
    again = session.run("print('nothing new')")
    assert again.files == [] and "Files written" not in again.observation


def test_the_sessions_cgroups_and_mounts_go_when_it_closes():
    session = CodeInterpreter(limits=LIMITS, isolate=True, timeout=30)
    name = f"glm-agent-{session.backend.runtime_dir.name}"
    own = {
        line.split(":")[1]: line.split(":")[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
    }
    cgroups = [
        Path(f"/sys/fs/cgroup/{controller}{own[controller].rstrip('/')}/{name}")
        for controller, holds in (("pids", session.isolation.max_processes), ("memory", session.isolation.total_memory))
        if holds and controller in own
    ]
    root = str(session._dirs.root)

    def mounted() -> bool:
        return any(line.split()[1] == root for line in Path("/proc/self/mounts").read_text().splitlines())

    assert all(path.is_dir() for path in cgroups) and mounted() == session.isolation.workspace_quota
    kernel_pid = int(session.run("import os\nprint(os.getpid())").stdout) and session.backend.pid
    if cgroups:
        assert (cgroups[0] / "cgroup.procs").read_text().strip()  # the kernel runs in it
    session.close()
    wait_until(lambda: not (any(path.exists() for path in cgroups) or mounted()), 5, what="cgroups and mounts to go")
    assert not any(path.exists() for path in cgroups) and not mounted() and not Path(root).exists()
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE


def test_readonly_paths_show_a_chosen_folder_read_only(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "sales.csv").write_text("units\n7\n")
    (tmp_path / "beside.txt").write_text("not chosen")
    code = (
        f"print(open({str(dataset / 'sales.csv')!r}).read().split()[1])\n"
        f"for path, mode in (({str(dataset / 'new.csv')!r}, 'w'), ({str(tmp_path / 'beside.txt')!r}, 'r')):\n"
        "    try:\n"
        "        open(path, mode)\n"
        "    except OSError as exc:\n"
        "        print(exc.strerror)\n"
    )
    with CodeInterpreter(isolate=True, readonly_paths=[dataset], timeout=30) as session:
        assert session.run(code).stdout == "7\nRead-only file system\nNo such file or directory\n"
    with pytest.raises(InterpreterError, match="does not exist"):
        CodeInterpreter(isolate=True, readonly_paths=[tmp_path / "missing"])


def test_a_workspace_of_yours_is_used_in_place_and_tmp_stays_bounded(tmp_path):
    with CodeInterpreter(tmp_path / "mine", isolate=True, limits=LIMITS, timeout=30) as session:
        assert not session.isolation.workspace_quota
        assert any("bounds /tmp and /dev/shm only" in note for note in session.isolation.notes)
        session.run("open('/mnt/data/kept.txt', 'w').write('x')")
        assert (tmp_path / "mine" / "kept.txt").read_text() == "x"
        result = session.run("open('/tmp/big.bin', 'wb').write(b'x' * 100 * 1024 * 1024)")
        assert "No space left on device" in result.observation, result.observation
        still_works(session)
    assert (tmp_path / "mine" / "kept.txt").read_text() == "x"  # your folder stays


def test_pooled_kernels_get_the_clean_environment_too(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with KernelPool(size=1, limits=LIMITS, isolate=True) as pool:
        assert pool.wait_ready(120), pool.last_error
        with CodeInterpreter(pool=pool, limits=LIMITS, timeout=30) as session:
            assert session.backend.workspace is not None
            shown = session.run("import os\nprint(sorted(os.environ.items()))").stdout
            assert not any(value in shown for value in SECRETS.values()), shown
            assert session.isolation.workspace_quota == detect_isolation().workspace_quota


def test_a_killed_supervisor_leaves_no_cgroup_behind():
    with CodeInterpreter(limits=LIMITS, isolate=True, timeout=30) as session:
        if not session.isolation.max_processes:
            pytest.skip("no pids cgroup here")
        own = dict(line.split(":")[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
        cgroup = Path(f"/sys/fs/cgroup/pids{own['pids'].rstrip('/')}/glm-agent-{session.backend.runtime_dir.name}")
        assert cgroup.is_dir()
        os.kill(session.backend.pid, 9)
        wait_until(lambda: not session.backend.is_alive(), what="the session to see its kernel killed")
        result = session.run("print('back')")
        assert result.restarted and result.stdout == "back\n", result.observation
        wait_until(lambda: not cgroup.exists(), what="the pids cgroup to go")
