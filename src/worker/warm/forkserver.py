# Millrace's Python fork server: an interpreter that has imported the wrapper's modules (and,
# the second of a worker's two, those of WORKER_PYTHON_PREIMPORT) once, and forks a child per
# job. It runs only
# this trusted code, never a script: each child confines itself exactly as the worker confines a
# cold job between fork and exec (src/worker/sandbox), then runs the wrapper.
#
# Its standard input is a SOCK_SEQPACKET socket to the worker. Each request is one JSON message
# with the job's stdout and stderr and the reading end of its job pipe as SCM_RIGHTS descriptors;
# the answers are {"id", "pid"} (or {"id", "error"}) once the child has taken the job's user, and
# {"id", "status"} (a raw wait status) once it exited. The child, confined, waits on the job pipe
# for the job's environment, which the worker writes there at once or, for a child forked ahead
# of its job, when the job comes (an empty pipe withdraws it). A request with "dedicated" brings
# instead the socket of a dedicated process: its child imports the script once and then runs job
# after job sent there (see `dedicated`). Nothing secret ever reaches this process (a job's
# environment goes from the worker to the child): what a child inherits of its memory is the
# same for every job.
# Every module this server and its children use, the wrapper's included, imported here once: a
# module a child imports is imported again by every job (`threading`, which a child's exit
# needs, nearly doubled a trivial job's time in a server that had not imported it).
import atexit
import ctypes
import fcntl
import gc
import inspect  # noqa: F401 (the wrapper's, for callables other than plain functions)
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import traceback
import types

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# A dedicated process's CPU seconds over its whole life, at most: it is then replaced.
DEDICATED_CPU_HARD = 24 * 3600
# What a child prints once it has its job (`STARTED` in prespawned.rs).
STARTED = b"\x1eMILLRACE_STARTED\n"
# A job's stdout and stderr as the worker gave them (in the child).
JOB_STREAMS = {}
# Where a child finds its job pipe (a dedicated one, its control socket): after its standard
# streams.
JOB_FD = 3

# What a child calls of libc, resolved, typed and made once here rather than in each child:
# every object a child makes or touches costs it copied pages of this server.
libc = ctypes.CDLL(None, use_errno=True)
PRCTL = libc.prctl
PRCTL.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
CAPSET = libc.capset
CAP_HEADER = ctypes.c_uint32 * 2
CAP_DATA = ctypes.c_uint32 * 6
CAP_LINES = (b"CapInh:", b"CapPrm:", b"CapEff:", b"CapAmb:")
SYSCALL = libc.syscall
SYSCALL.restype = ctypes.c_long
# keyctl's operations and special keyrings (a variadic call: each a C long).
KEYCTL_JOIN, KEYCTL_CLEAR, KEYCTL_LINK, KEYCTL_GET_PERSISTENT = (
    ctypes.c_long(n) for n in (1, 7, 8, 22)
)
KEY_PROCESS, KEY_USER, KEY_USER_SESSION, KEY_NONE, KEY_SELF = (
    ctypes.c_long(n) for n in (-2, -4, -5, 0, -1)
)


def prctl(option, value, extra=0):
    if PRCTL(option, value, extra, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def drop_capabilities():
    """Empties every capability set. Taking a job user from root clears them, but a worker that
    is not root (CAP_SETUID/CAP_SETGID given some other way) keeps them through setresuid, and
    this child never execs (which would). Then checks that nothing is left."""
    header = CAP_HEADER(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if CAPSET(header, CAP_DATA()) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    # As bytes: a text file would look up its codec and build a decoder in every child (an
    # eighth of a trivial job's CPU, measured).
    with open("/proc/self/status", "rb") as f:
        held = [l for l in f.read().splitlines() if l.startswith(CAP_LINES)]
    # Fails closed: a set it cannot read counts as held.
    if len(held) != len(CAP_LINES) or any(int(l.split()[1], 16) for l in held):
        raise OSError(f"capabilities left: {[l.decode(errors='replace') for l in held]}")


def set_limit(resource_id, value):
    # Lowered to what this process may have, as the worker's own `limits::apply` does.
    _, hard = resource.getrlimit(resource_id)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(resource_id, (value, value))


def forget_keys(keyctl):
    """Empties the user's keyrings, as `users::forget_keys` does (refusals are fine)."""
    nr = ctypes.c_long(keyctl)
    SYSCALL(nr, KEYCTL_JOIN, KEY_NONE)
    SYSCALL(nr, KEYCTL_CLEAR, KEY_USER)
    SYSCALL(nr, KEYCTL_CLEAR, KEY_USER_SESSION)
    SYSCALL(nr, KEYCTL_LINK, KEY_USER, KEY_USER_SESSION)
    persistent = SYSCALL(nr, KEYCTL_GET_PERSISTENT, KEY_SELF, KEY_PROCESS)
    if persistent > 0:
        SYSCALL(nr, KEYCTL_CLEAR, ctypes.c_long(persistent))


def confine(job, server_pid):
    """The child's steps, in the order of `Confinement::enter` and `dies_with_parent`."""
    write_file("/proc/self/oom_score_adj", b"1000")
    for procs in job["cgroups"]:
        write_file(procs, b"0")
    os.setpgid(0, 0)
    uid = job["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        forget_keys(job["keyctl"])
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    limits = job["limits"]
    set_limit(resource.RLIMIT_CORE, 0)
    set_limit(resource.RLIMIT_MSGQUEUE, 0)
    set_limit(resource.RLIMIT_DATA, limits["memory"])
    set_limit(resource.RLIMIT_NOFILE, limits["open_files"])
    set_limit(resource.RLIMIT_FSIZE, limits["file_size"])
    # A dedicated process's CPU limit counts its whole life: each job raises the soft limit by
    # its own allowance (see `dedicated`) under this hard one, which no job can lift.
    if job.get("dedicated"):
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard == resource.RLIM_INFINITY or hard > DEDICATED_CPU_HARD:
            hard = DEDICATED_CPU_HARD
        resource.setrlimit(resource.RLIMIT_CPU, (min(limits["cpu_seconds"], hard), hard))
    else:
        set_limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
    if uid is not None:
        set_limit(resource.RLIMIT_NPROC, limits["processes"])
    # Taking the user cleared both: the job dies with this server (which dies with the worker),
    # and is dumpable as a freshly started program is.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        raise OSError("the fork server is gone")
    if uid is not None:
        prctl(PR_SET_DUMPABLE, 1)


def become_job(conn, job, fds, server_pid, wrapper):
    """Runs in the forked child, and never returns."""
    job_pid = os.getpid()
    conn.detach()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    if job.get("dedicated"):
        # Its output goes to each job's own pipes; between jobs, nowhere.
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.dup2(fds[0], JOB_FD)
    else:
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.dup2(fds[2], JOB_FD)
        # The worker's pipes, whose markers it reads (see `finish`).
        JOB_STREAMS.update({fd: stream_id(fd) for fd in (1, 2)})
    try:
        confine(job, server_pid)
        # Every other descriptor goes, the socket to the worker above all (a job holding it
        # could ask for any user) and the pipe whose end tells the server the child is
        # confined.
        os.closerange(JOB_FD + 1, 1 << 20)
        os.chdir(job["dir"])
    except BaseException as e:
        print(f"millrace: cannot start the job: {e}", file=sys.stderr, flush=True)
        os._exit(126)
    sys.argv = ["wrapper.py"]
    sys.path.insert(0, job["dir"])
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(job["dir"], "wrapper.py")
    sys.modules["__main__"] = main
    if job.get("dedicated"):
        main.__name__ = "millrace_wrapper"
        exec(wrapper, main.__dict__)
        dedicated(socket.socket(fileno=JOB_FD), main.__dict__)
    env = wait_for_job()
    os.environ.clear()
    os.environ.update(env)
    code = 0
    try:
        exec(wrapper, main.__dict__)
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    # A process the script forked comes back here too, and its end is not the job's.
    finish(code, tell=os.getpid() == job_pid)


def wait_for_job():
    """The job's environment, once the worker wrote all of it with the job's CPU limit (which
    this child lowers its own to), and says it has the job; a pipe closed empty withdraws the
    job (this child was forked ahead of one, and is given up)."""
    chunks = []
    while chunk := os.read(JOB_FD, 1 << 16):
        chunks.append(chunk)
    os.close(JOB_FD)
    if not chunks:
        os._exit(0)
    try:
        job = json.loads(b"".join(chunks))
        set_limit(resource.RLIMIT_CPU, job["cpu_seconds"])
        # Only its word tells the worker it has the job: a child stopped or killed as it
        # was handed the job still took the pipe's bytes.
        os.write(1, STARTED)
        return job["env"]
    except (ValueError, KeyError, OSError) as e:
        print(f"millrace: cannot start the job: {e}", file=sys.stderr, flush=True)
        os._exit(126)


def dedicated(control, wrapper):
    """A dedicated process: the script is imported by its first job and stays, with whatever
    state its module keeps, for every later job of this process. Each job comes on `control`
    with its environment and output pipes; its end goes back as a wait status. Never returns."""
    try:
        serve_dedicated(control, wrapper)
    except BaseException:
        # Never back into the server's loop: this process is a job's.
        os._exit(1)


def serve_dedicated(control, wrapper):
    # What every job starts from, whatever the previous one changed.
    home = os.getcwd()
    mask = os.umask(0o077)
    os.umask(mask)
    main = None
    while True:
        os.chdir(home)
        os.umask(mask)
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 2)
        if not message:
            os._exit(0)
        job = json.loads(message)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        os.environ.clear()
        os.environ.update(job["env"])
        # wmill keeps a client, and with it the previous job's token: each job gets its own.
        if "wmill.client" in sys.modules:
            sys.modules["wmill.client"]._client = None
        # The CPU limit counts the process's whole life: each job gets its own allowance.
        used = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used.ru_utime + used.ru_stime) + job["cpu_seconds"]
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        code = 0
        try:
            if main is None:
                main = wrapper["load"]()
            wrapper["call"](main)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
        code = exit_status(code)
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        control.send(json.dumps({"status": (code & 0xFF) << 8}).encode())
        if main is None or threading.active_count() > 1:
            # The script does not load, or the job left threads running (they would go on
            # into the next job, past this one's timeout): nothing to keep.
            os._exit(code & 0xFF)


def finish(code, tell):
    """Ends the job's process as the interpreter's exit would, less the teardown of every
    module the server imported (tens of milliseconds with wmill's): non-daemon threads are
    waited for, exit handlers run, output flushed; with `tell`, the job's end is told."""
    threading._shutdown()
    atexit._run_exitfuncs()
    code = exit_status(code) & 0xFF
    # Last, on both pipes: the job is over (see EXIT_MARKER in process.rs), and the worker
    # need not wait for this process's teardown and the server's report of its exit.
    marker = f"\x1eMILLRACE_EXIT {code}\n".encode()
    if tell:
        # Nothing of it, its memory least of all, for the user's next job to read while it is
        # torn down.
        try:
            prctl(PR_SET_DUMPABLE, 0)
        except OSError:
            pass
    told = tell
    for fd in (1, 2) if tell else ():
        try:
            told = told and os.write(fd, marker) == len(marker) and stream_id(fd) == JOB_STREAMS.get(fd)
        except OSError:
            told = False
            break
    if told:
        # What is left is the kernel's teardown of this copy of the server (~1 ms of CPU), which
        # no one waits for once the worker read both markers: behind every other job's work,
        # and the next call's. (Not when a marker may have gone elsewhere: then the worker
        # waits for the exit.)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        except OSError:
            pass
    os._exit(code)


def stream_id(fd):
    stat = os.fstat(fd)
    return (stat.st_dev, stat.st_ino)


def exit_status(code):
    """Flushes the job's output and turns `sys.exit`'s argument into a status, as the
    interpreter does: None is 0, anything but a number is printed and is 1."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code is None:
        return 0
    if not isinstance(code, int):
        print(code, file=sys.stderr, flush=True)
        return 1
    return code


def serve(conn, wrapper):
    """Runs until the worker is gone."""
    server_pid = os.getpid()
    jobs = {}
    # A child's pid goes to the worker only once the child has taken the job's user (its end
    # of a pipe closes then): a kill of the user's processes before would miss it.
    confining = {}
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    conn.send(b'{"ready":true}')

    def announce(pid):
        os.close(confining.pop(pid))
        conn.send(json.dumps({"id": jobs[pid], "pid": pid}).encode())

    while True:
        watched = {fd: pid for pid, fd in confining.items()}
        readable, _, _ = select.select([conn, wake_r, *watched], [], [])
        for fd in readable:
            if fd in watched:
                announce(watched[fd])
        if wake_r in readable:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in confining:
                    announce(pid)
                job_id = jobs.pop(pid, None)
                if job_id is not None:
                    conn.send(json.dumps({"id": job_id, "status": status}).encode())
        if conn not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(conn, 65536, 3)
        if not message:
            os._exit(0)
        job = json.loads(message)
        if len(fds) != (1 if job.get("dedicated") else 3):
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"id": job["id"], "error": "wrong descriptors"}).encode())
            continue
        confined_r, confined_w = os.pipe2(os.O_CLOEXEC)
        # Above the descriptors a child sets up (0-3), so that none replaces it early.
        high = fcntl.fcntl(confined_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(confined_w)
        confined_w = high
        try:
            pid = os.fork()
        except OSError as e:
            for fd in [*fds, confined_r, confined_w]:
                os.close(fd)
            conn.send(json.dumps({"id": job["id"], "error": str(e)}).encode())
            continue
        if pid == 0:
            become_job(conn, job, fds, server_pid, wrapper)
        for fd in [*fds, confined_w]:
            os.close(fd)
        jobs[pid] = job["id"]
        confining[pid] = confined_r


def start():
    # Not dumpable: no job may trace it or read its memory (it has nothing secret, but it holds
    # the worker's rights).
    prctl(PR_SET_DUMPABLE, 0)
    conn = socket.socket(fileno=0)
    with open(sys.argv[1], encoding="utf-8") as f:
        wrapper = compile(f.read(), "wrapper.py", "exec")
    for name in filter(None, (n.strip() for n in sys.argv[2].split(","))):
        try:
            __import__(name)
        except Exception as e:
            print(f"millrace fork server: cannot preimport {name}: {e}", file=sys.stderr)
    # What was imported stays out of the collector's sight: a child's collections then do not
    # touch (and copy) the server's pages.
    gc.freeze()
    serve(conn, wrapper)


start()
