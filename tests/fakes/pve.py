#!/usr/bin/python3
"""Fake Proxmox `qm` and `pct` for tests (this file, called by either name).

Behaves like the real tools where the toolkit depends on it:
- `qm status ID` / `pct status ID` print `status: running|stopped` and exit 0
  either way; an unknown guest: "Configuration file '...' does not exist", 255.
- `qm guest cmd ID ping`, `qm guest exec`, `qm guest exec-status`: first
  the checks of qemu-server src/PVE/QemuServer/Agent.pm
  `assert_agent_available`, in its order: "No QEMU guest agent configured"
  (no `agent:` in the VM's config), "VM ID is not running", "QEMU guest
  agent is not running", each 255 (a Perl `die`: 255 unless `$!` is set).
  `ping` then is a silent exit 0.
- `qm guest exec ID [--timeout T] [--pass-stdin 0|1] [--synchronous 0|1] -- ARGV`:
  exits 0 whatever the command did and prints the result as PVE does
  (`to_json(pretty, canonical)`: 3-space indent, `"key" : value`, sorted),
  with `exited` 1/0, `exitcode` (absent when killed by a signal, `signal`
  then), `out-data`/`err-data` when non-empty. Those are the guest's
  bytes, each taken as a character (Agent.pm `decode_base64`) and encoded
  as UTF-8 by `to_json(..., utf8 => 1)` (src/PVE/CLI/qm.pm
  `$print_agent_result`): non-ASCII output comes doubly encoded, the
  guest's "é" (C3 A9) as "Ã©" (C3 83 C2 A9), not escaped. When the command outlives
  --timeout (default 30 s) it prints "timeout reached, returning pid" on
  stderr and `{"pid" : N}` on stdout; the command goes on running.
  --pass-stdin over 1 MiB: "'input-data' (STDIN) is limited to 1 MiB, aborting".
- `qm guest exec-status ID PID`: `{"exited" : 0}` while running, the result once done.
- `pct exec ID -- ARGV`: the command's own exit status and output. A
  stopped CT: "container 'ID' not running!", 255 (pve-container
  src/PVE/CLI/pct.pm `exec`, which takes no lock).
- `pct push ID FILE DEST [--perms P] [--user U] [--group G]` (pve-container
  src/PVE/CLI/pct.pm): writes FILE's bytes to DEST (the fake guests share
  the host's file system), created with mode 0 then chmod P (octal unless
  0x...; "600" means 0600), as `create_file` does. A stopped or unknown CT:
  "can only push files to a running CT", 255 (checked before the config is
  read). The copy itself runs as a task, and `pct push` exits 0 even when
  the task fails (CLI fork_worker returns the status, `push` has no exit
  handler): "failed to open FILE for reading", "invalid mode: 'P'",
  "failed to create file: DEST: <strerror>" go to stderr, exit 0.
  `push` holds the CT's config lock (`lock_config`, pve-guest-common
  src/PVE/AbstractConfig.pm, 10 s): when it is held (`lock` below) it
  prints "trying to acquire lock..." and then, where the real one waits
  the 10 s first, "can't lock file '/run/lock/lxc/pve-config-ID.lock' -
  got timeout" (pve-common src/PVE/Tools.pm `lock_file_full`), 255. A task
  with warnings (`push_warnings` below) prints them on stdout (the sync
  task's output is teed to stdout) and "Task finished with N
  warning(s)!" on stderr, exit 0 (pve-common src/PVE/RESTEnvironment.pm).
- Unknown options: "Unknown option: X" + "400 unable to parse option", 255.

`pvesh` (pve-manager PVE/CLI/pvesh.pm; qemu-server src/PVE/API2/Qemu.pm
and src/PVE/API2/Qemu/Agent.pm; pve-container src/PVE/API2/LXC/Status.pm):
- `pvesh [--noproxy] get|create PATH [--output-format json|json-pretty|text]
  [--PARAM VALUE]...`, options as PVE::JSONSchema `get_options` parses
  them (Getopt::Long, `--` or `-` prefix, `--p=v`; an array parameter
  repeated; a mandatory string takes the next word, whatever it is). A
  path with no handler: "No 'get' handler defined for 'PATH'", exit 1.
  `json` prints `to_json($data, {utf8, allow_nonref, canonical})` on one
  line (pve-common src/PVE/CLIFormatter.pm `print_api_result`), so the
  agent's out-data comes doubly encoded as with qm; `text` (the default)
  is only approximated (KEY VALUE lines).
- `GET /nodes/N/qemu/ID/status/current`: `status`, `qmpstatus` (running
  only), `vmid`, `name`, `agent` (1 when configured), `ha`;
  `GET /nodes/N/lxc/ID/status/current`: `status`, `vmid`, `name`, `type`, `ha`.
- `POST /nodes/N/qemu/ID/agent/ping`: assert_agent_available, then
  `{"result":{}}`.
- `POST /nodes/N/qemu/ID/agent/exec --command PROG --command ARG...
  [--input-data TEXT]`: `input-data` over 64 KiB: "400 Parameter
  verification failed.\ninput-data: value may only be 65536 characters
  long"; `command` is mandatory in the API's schema since PVE 8 (qemu_exec's
  "command or input-data (or both) required" is for `qm guest exec`);
  then assert_agent_available; prints `{"pid":N}` at once (no wait), the
  command runs on with input-data on its stdin.
- `GET /nodes/N/qemu/ID/agent/exec-status --pid N`: `{"exited":0}` while
  it runs, then the result as `qm guest exec` gives it (with the real
  exit code or signal), once: the pid is forgotten then ("Agent error:
  Invalid parameter 'pid'" after).
- Every handler loads the guest's config first: a guest not on the node
  that runs it: "Configuration file 'nodes/NODE/qemu-server/ID.conf' does
  not exist" (pve-guest-common src/PVE/AbstractConfig.pm `load_config`),
  255. A path naming another node is proxied to it, as `proxyto =>
  'node'` does (`ssh root@NODE pvesh --noproxy CMD PATH --output-format
  json PARAMS`): here the fake runs itself as that node (FAKE_PVE_NODE=N,
  the call recorded again with `--noproxy`), prints the JSON it got in the
  asked format, and when the remote fails, its stderr lines but the last,
  then "proxy handler failed: LAST", 255 (pve-common src/PVE/Cmd.pm with
  `errmsg`). A node the cluster does not have: "hostname lookup 'N'
  failed - failed to get address info for: N: Name or service not
  known" (pve-common src/PVE/Network.pm); `--noproxy` for another node:
  "proxy loop detected - aborting".

A cluster: FAKE_PVE_NODE names the node the fake runs as ("pve" when
unset); FAKE_PVE_CLUSTER, when set, is the shared cluster tree (what
/etc/pve is on every node): a guest is on node N when
`nodes/N/qemu-server/ID.conf` (`nodes/N/lxc/ID.conf`) exists there, as
load_config reads it, and only there do `qm`, `pct` and the API find it
("Configuration file 'nodes/THIS/...' does not exist" elsewhere; `pct
push`: "can only push files to a running CT"). Without it every guest
under $PHOENIX_FAKE_PVE is the node's own. The guests themselves
(below) are shared by all nodes: one VM is the same wherever it is asked.

State lives under $PHOENIX_FAKE_PVE:
  qemu/ID/ or lxc/ID/      the guest exists
    status                 "running" (default) or "stopped"
    agent                  (VMs) missing: the agent runs; "absent": it does
                           not (a booting VM); "unconfigured": no `agent:`
                           line in the VM's config
    lock                   (CTs) present: another task holds the config lock
    push_warnings          (CTs) N: `pct push` ends with N warnings
    bin/                   the guest's commands: first on PATH for ARGV
    hang                   a call whose argv contains this text (e.g.
                           "guest exec") hangs for ever, as qm does on a
                           wedged agent; its pid goes to hang.pid first
  calls.jsonl              every call: {"tool", "argv", "stdin_bytes", "env"}
                           (tool "pvesh" too: a proxied call twice, the
                           node in env FAKE_PVE_NODE)
Guest commands run with FAKE_GUEST_ID, FAKE_GUEST_DIR and FAKE_PVE set.
"""
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

STDIN_LIMIT = 1024 * 1024
INPUT_DATA_LIMIT = 64 * 1024


def local_node():
    """The node this fake runs as (PVE::INotify::nodename)."""
    return os.environ.get("FAKE_PVE_NODE") or "pve"


def cluster_root():
    """The shared cluster tree (/etc/pve), or None on a lone node."""
    return os.environ.get("FAKE_PVE_CLUSTER") or None


def config_sub(kind):
    return "qemu-server" if kind in ("qm", "qemu") else "lxc"


def on_this_node(kind, vmid):
    """The guest's config is under this node's directory of the cluster tree."""
    root = cluster_root()
    if root is None:
        return True
    return os.path.exists(os.path.join(root, "nodes", local_node(), config_sub(kind),
                                       f"{vmid}.conf"))


def die(msg, code=255):
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.exit(code)


def state_root():
    root = os.environ.get("PHOENIX_FAKE_PVE")
    if not root:
        die("fake pve: PHOENIX_FAKE_PVE is not set")
    return root


def record(tool, argv, stdin_bytes=0):
    with open(os.path.join(state_root(), "calls.jsonl"), "a") as f:
        f.write(json.dumps({"tool": tool, "argv": argv, "stdin_bytes": stdin_bytes,
                            "env": dict(os.environ)}) + "\n")


def print_agent_result(obj):
    """`to_json($result, {pretty => 1, canonical => 1, utf8 => 1})`: JSON::XS
    writes non-ASCII characters as UTF-8, unescaped (qemu-server
    src/PVE/CLI/qm.pm `$print_agent_result`)."""
    text = json.dumps(obj, indent=3, sort_keys=True, separators=(",", " : "),
                      ensure_ascii=False) + "\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def assert_agent_available(d, vmid):
    """qemu-server src/PVE/QemuServer/Agent.pm `assert_agent_available`."""
    if read(os.path.join(d, "agent"), "running") == "unconfigured":
        die("No QEMU guest agent configured")
    if not is_running(d):
        die(f"VM {vmid} is not running")
    if read(os.path.join(d, "agent"), "running") == "absent":
        die("QEMU guest agent is not running")


def guest_dir(kind, vmid):
    if not vmid.isdigit():
        die(f"400 Parameter verification failed.\nvmid: invalid format - value does not look like a valid VM ID")
    d = os.path.join(state_root(), "qemu" if kind in ("qm", "qemu") else "lxc", vmid)
    if not os.path.isdir(d) or not on_this_node(kind, vmid):
        die(f"Configuration file 'nodes/{local_node()}/{config_sub(kind)}/{vmid}.conf' "
            "does not exist")
    return d


def read(path, default):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def is_running(d):
    return read(os.path.join(d, "status"), "running") == "running"


def parse_opts(args, known):
    """Split `--opt value` options (PVE style, also --opt=value) from the rest."""
    opts, rest = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i + 1:])
            break
        if a.startswith("--"):
            name, _, val = a[2:].partition("=")
            if name not in known:
                die(f"Unknown option: {name}\n400 unable to parse option")
            if not val:
                i += 1
                if i >= len(args):
                    die(f"400 unable to parse option\n{name}: missing value")
                val = args[i]
            opts[name] = val
        else:
            rest.append(a)
        i += 1
    return opts, rest


def perl_bool(name, val):
    if val in ("1", "true", "yes", "on"):
        return True
    if val in ("0", "false", "no", "off"):
        return False
    die(f"400 Parameter verification failed.\n{name}: type check ('boolean') failed - got '{val}'")


def guest_env(d, vmid):
    env = dict(os.environ)
    env["PATH"] = os.path.join(d, "bin") + ":/usr/local/bin:/usr/bin:/bin"
    env["FAKE_GUEST_ID"] = vmid
    env["FAKE_GUEST_DIR"] = d
    env["FAKE_PVE"] = state_root()
    return env


def result_of(proc_returncode, out, err):
    res = {"exited": 1}
    if proc_returncode < 0:
        res["signal"] = -proc_returncode
    else:
        res["exitcode"] = proc_returncode
    # decode_base64 gives bytes; each is one character to to_json.
    if out:
        res["out-data"] = out.decode("latin-1")
    if err:
        res["err-data"] = err.decode("latin-1")
    return res


def qm_guest_exec(args):
    opts, rest = parse_opts(args, {"timeout", "pass-stdin", "synchronous"})
    if not rest:
        die("400 not enough arguments\nqm guest exec <vmid> [<extra-args>] [OPTIONS]")
    vmid, argv = rest[0], rest[1:]
    sync = perl_bool("synchronous", opts.get("synchronous", "1"))
    if "timeout" in opts and not sync:
        die("400 Parameter verification failed.\nsynchronous: needs to be set for 'timeout'")
    timeout = opts.get("timeout", "30")
    if not timeout.isdigit():
        die(f"400 Parameter verification failed.\ntimeout: type check ('integer') failed - got '{timeout}'")
    timeout = int(timeout)
    data = None
    if perl_bool("pass-stdin", opts.get("pass-stdin", "0")):
        data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
        if len(data) > STDIN_LIMIT:
            die("'input-data' (STDIN) is limited to 1 MiB, aborting")
    record("qm", ["guest", "exec"] + args, len(data or b""))
    d = guest_dir("qm", vmid)
    assert_agent_available(d, vmid)
    if not argv:
        die("400 Parameter verification failed.\nextra-args: No command given")
    # The command's output goes to files, as the agent buffers it, so a
    # command that outlives the timeout can go on running after we return.
    jobs = os.path.join(d, "jobs")
    os.makedirs(jobs, exist_ok=True)
    out_path = os.path.join(jobs, f"{os.getpid()}.out")
    err_path = os.path.join(jobs, f"{os.getpid()}.err")
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out_f, stderr=err_f,
                                    env=guest_env(d, vmid), start_new_session=True)
        except OSError as e:
            # qemu-ga answers a failed spawn with an error, which qm dies with.
            die(f"Agent error: Failed to execute child process \u201c{argv[0]}\u201d ({e.strerror})")
    proc.stdin.write(data or b"")
    proc.stdin.close()
    pidfile = os.path.join(jobs, f"{proc.pid}.json")
    with open(pidfile + ".paths", "w") as f:
        json.dump({"out": out_path, "err": err_path}, f)
    if not sync:
        print_agent_result({"pid": proc.pid})
        return 0
    start = time.time()
    while timeout == 0 or time.time() - start < timeout:
        rc = proc.poll()
        if rc is not None:
            res = result_of(rc, open(out_path, "rb").read(), open(err_path, "rb").read())
            print_agent_result(res)
            return 0
        time.sleep(0.02)
    sys.stderr.write("timeout reached, returning pid\n")
    print_agent_result({"pid": proc.pid})
    return 0


def qm_exec_status(args):
    if len(args) != 2:
        die("400 wrong number of arguments\nqm guest exec-status <vmid> <pid>")
    vmid, pid = args
    record("qm", ["guest", "exec-status"] + args)
    d = guest_dir("qm", vmid)
    assert_agent_available(d, vmid)
    paths = os.path.join(d, "jobs", f"{pid}.json.paths")
    if not os.path.exists(paths):
        die(f"Agent error: Invalid parameter 'pid'")
    try:
        os.kill(int(pid), 0)
        if read(f"/proc/{pid}/stat", "").split(" ")[2:3] != ["Z"]:
            print_agent_result({"exited": 0})
            return 0
    except ProcessLookupError:
        pass
    p = json.load(open(paths))
    os.unlink(paths)
    # The exit status of a process we did not wait for is unknown here:
    # report a plain exit 0 as the agent would for a clean end.
    print_agent_result(result_of(0, open(p["out"], "rb").read(), open(p["err"], "rb").read()))
    return 0


def qm_main(args):
    if args[:1] == ["status"] and len(args) == 2:
        record("qm", args)
        d = guest_dir("qm", args[1])
        sys.stdout.write(f"status: {read(os.path.join(d, 'status'), 'running')}\n")
        return 0
    if args[:2] == ["guest", "cmd"] and len(args) == 4:
        record("qm", args)
        vmid, cmd = args[2], args[3]
        d = guest_dir("qm", vmid)
        assert_agent_available(d, vmid)
        if cmd != "ping":
            die(f"400 Parameter verification failed.\ncommand: value '{cmd}' does not have a value in the enumeration")
        return 0
    if args[:2] == ["guest", "exec"]:
        return qm_guest_exec(args[2:])
    if args[:2] == ["guest", "exec-status"]:
        return qm_exec_status(args[2:])
    record("qm", args)
    die(f"unknown command 'qm {' '.join(args[:2])}'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]")


def parse_perms(perms):
    """Perl strtoul(P, 0) after pct's "assume octal" prefix."""
    if not perms.startswith("0"):
        perms = "0" + perms
    try:
        if perms.lower().startswith("0x"):
            return int(perms[2:], 16)
        return int(perms, 8)
    except ValueError:
        return None


def pct_push(args):
    usage = "pct push <vmid> <file> <destination> [OPTIONS]"
    opts, rest = parse_opts(args, {"perms", "user", "group"})
    record("pct", ["push"] + args)
    if len(rest) < 3:
        die(f"400 not enough arguments\n{usage}")
    if len(rest) > 3:
        die(f"400 too many arguments\n{usage}")
    vmid, src, dest = rest
    if not vmid.isdigit():
        die("400 Parameter verification failed.\nvmid: invalid format - value does not look like a valid VM ID")
    d = os.path.join(state_root(), "lxc", vmid)
    # lock_config first, then the check inside it (pct.pm `push`).
    if os.path.exists(os.path.join(d, "lock")):
        sys.stderr.write("trying to acquire lock...\n")
        die(f"can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout")
    if not os.path.isdir(d) or not is_running(d) or not on_this_node("pct", vmid):
        die("can only push files to a running CT")
    # From here on the real tool runs a task: errors on stderr, exit 0.
    def task_error(msg):
        sys.stderr.write(msg + "\n")
        sys.exit(0)
    try:
        srcfd = os.open(src, os.O_RDONLY)
    except OSError:
        task_error(f"failed to open {src} for reading")
    perms = opts.get("perms")
    mode = None
    if perms is not None:
        mode = parse_perms(perms)
        if mode is None:
            task_error(f"invalid mode: '{perms}'")
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)
        if mode is None:
            mode = 0o666 & ~os.umask(os.umask(0))
    except OSError:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError as e:
            task_error(f"failed to create file: {dest}: {e.strerror}")
    if mode is not None:
        os.fchmod(fd, mode)
    if "user" in opts or "group" in opts:
        st = os.fstat(fd)
        uid, gid = st.st_uid, st.st_gid
        if "user" in opts:
            u = opts["user"]
            try:
                uid = int(u) if u.isdigit() else pwd.getpwnam(u).pw_uid
            except KeyError:
                task_error(f"failed to get uid for: {u}")
        if "group" in opts:
            g = opts["group"]
            try:
                gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
            except KeyError:
                task_error(f"failed to get gid for: {g}")
        try:
            os.fchown(fd, uid, gid)
        except OSError as e:
            task_error(f"failed to change file owner: {e.strerror}")
    while True:
        chunk = os.read(srcfd, 65536)
        if not chunk:
            break
        os.write(fd, chunk)
    os.close(fd)
    warnings = int(read(os.path.join(d, "push_warnings"), "0") or "0")
    if warnings:
        for i in range(warnings):
            sys.stdout.write(f"WARN: fake warning {i + 1}\n")
        sys.stderr.write(f"Task finished with {warnings} warning(s)!\n")
    return 0


def pct_main(args):
    if args[:1] == ["status"] and len(args) == 2:
        record("pct", args)
        d = guest_dir("pct", args[1])
        sys.stdout.write(f"status: {read(os.path.join(d, 'status'), 'running')}\n")
        return 0
    if args[:1] == ["exec"]:
        if len(args) < 2:
            die("400 not enough arguments\npct exec <vmid> [<extra-args>]")
        vmid, rest = args[1], args[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        data = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
        record("pct", args, len(data))
        d = guest_dir("pct", vmid)
        if not is_running(d):
            die(f"container '{vmid}' not running!")
        if not rest:
            die("400 Parameter verification failed.\nextra-args: No command given")
        try:
            proc = subprocess.run(rest, input=data, env=guest_env(d, vmid))
        except OSError as e:
            die(f"lxc-attach: {vmid}: attach.c: exec: {e.strerror} - Failed to exec \"{rest[0]}\"", 127)
        return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    if args[:1] == ["push"]:
        return pct_push(args[1:])
    record("pct", args)
    die(f"unknown command 'pct {' '.join(args[:1])}'\nUSAGE: pct <COMMAND> [ARGS] [OPTIONS]")


# --- pvesh -----------------------------------------------------------------

PVESH_COMMANDS = {"get": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}

# (method, path regex) -> (handler name, {param: (type, optional)})
PVESH_HANDLERS = [
    ("GET", r"/nodes/([^/]+)/qemu/(\d+)/status/current", "qemu_status", {}),
    ("GET", r"/nodes/([^/]+)/lxc/(\d+)/status/current", "lxc_status", {}),
    ("POST", r"/nodes/([^/]+)/qemu/(\d+)/agent/ping", "agent_ping", {}),
    ("POST", r"/nodes/([^/]+)/qemu/(\d+)/agent/exec", "agent_exec",
     {"command": ("array", False), "input-data": ("string", True)}),
    ("GET", r"/nodes/([^/]+)/qemu/(\d+)/agent/exec-status", "agent_exec_status",
     {"pid": ("integer", False)}),
]

# Options every pvesh call takes (pvesh.pm: noproxy; RESTHandler's
# standard output options).
PVESH_OWN = {"noproxy": ("boolean", True), "output-format": ("string", True),
             "quiet": ("boolean", True), "human-readable": ("boolean", True),
             "noborder": ("boolean", True), "noheader": ("boolean", True)}


def pvesh_find_handler(method, path):
    clean = "/" + "/".join(p for p in path.split("/") if p)
    for m, pattern, name, params in PVESH_HANDLERS:
        if m != method:
            continue
        match = re.fullmatch(pattern, clean)
        if match:
            return name, match.group(1), match.group(2), params
    return None


def pvesh_get_options(args, schema):
    """PVE::JSONSchema::get_options: Getopt::Long with prefix (--|-)."""
    opts, rest = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i + 1:])
            break
        if a.startswith("-") and len(a) > 1:
            name, eq, val = a.lstrip("-").partition("=")
            if name not in schema:
                die(f"Unknown option: {name}\n400 unable to parse option")
            typ, _ = schema[name]
            if typ == "boolean":
                # ":s": an optional value, taken when it is no option.
                if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    i += 1
                    val = args[i]
                opts[name] = val
            else:
                if eq and val == "":
                    die(f"Option {name} requires an argument\n400 unable to parse option")
                if not eq:
                    i += 1
                    if i >= len(args):
                        die(f"Option {name} requires an argument\n400 unable to parse option")
                    val = args[i]
                if typ == "array":
                    opts.setdefault(name, []).append(val)
                else:
                    opts[name] = val
        else:
            rest.append(a)
        i += 1
    if rest:
        die("400 too many arguments")
    for name, (typ, optional) in schema.items():
        if name not in opts:
            if not optional:
                die(f"400 Parameter verification failed.\n"
                    f"{name}: property is missing and it is not optional")
            continue
        val = opts[name]
        if typ == "boolean":
            opts[name] = val == "" or perl_bool(name, val)
        elif typ == "integer" and not re.fullmatch(r"[+-]?\d+", val):
            die(f"400 Parameter verification failed.\n"
                f"{name}: type check ('integer') failed - got '{val}'")
    return opts


def pvesh_print(data, fmt):
    """pve-common src/PVE/CLIFormatter.pm `print_api_result`."""
    if fmt == "json":
        text = json.dumps(data, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False) + "\n"
    elif fmt == "json-pretty":
        text = json.dumps(data, indent=3, sort_keys=True, separators=(",", " : "),
                          ensure_ascii=False) + "\n"
    elif fmt == "text":
        # Approximated: the real one draws a table.
        if isinstance(data, dict):
            text = "".join(f"{k} {json.dumps(v) if isinstance(v, (dict, list)) else v}\n"
                           for k, v in sorted(data.items()))
        else:
            text = f"{data}\n"
    else:
        die(f"400 Parameter verification failed.\noutput-format: value '{fmt}' does not "
            "have a value in the enumeration 'text, json, json-pretty, yaml'")
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def pvesh_proxy(node, cmd, path, params, raw_args):
    """`proxy_handler`: the same call on NODE with --noproxy, its JSON back."""
    root = cluster_root()
    if root is None or not os.path.isdir(os.path.join(root, "nodes", node)):
        die(f"hostname lookup '{node}' failed - failed to get address info for: {node}: "
            "Name or service not known")
    argv = ["--noproxy", cmd, path, "--output-format", "json"]
    for key, val in params.items():
        if key in ("quiet", "output-format", "noproxy"):
            continue
        for v in (val if isinstance(val, list) else [val]):
            argv += [f"--{key}", "1" if v is True else "0" if v is False else v]
    env = dict(os.environ)
    env["FAKE_PVE_NODE"] = node
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv,
                          env=dict(env, FAKE_PVE_TOOL="pvesh"),
                          stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").rstrip("\n").split("\n")
        lines = [l for l in lines if l]
        for l in lines[:-1]:
            sys.stderr.write(l + "\n")
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        die(f"proxy handler failed: {last}")
    try:
        return json.loads(proc.stdout.decode("utf-8"))
    except ValueError:
        return proc.stdout.decode("utf-8", "replace")


def vm_name(d, vmid):
    return read(os.path.join(d, "hostname"), f"VM{vmid}")


def agent_spawn(d, vmid, argv, data):
    """qemu-ga's guest-exec: start ARGV with DATA on its stdin, return its
    pid at once; a supervisor (detached, its own session) waits for it and
    writes its end to jobs/api-PID.rc."""
    env = guest_env(d, vmid)
    if shutil.which(argv[0], path=env["PATH"]) is None and "/" not in argv[0]:
        die(f"Agent error: Failed to execute child process \u201c{argv[0]}\u201d "
            "(No such file or directory)")
    jobs = os.path.join(d, "jobs")
    os.makedirs(jobs, exist_ok=True)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            tag = f"{os.getpid()}"
            out_path = os.path.join(jobs, f"api-{tag}.out")
            err_path = os.path.join(jobs, f"api-{tag}.err")
            with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
                try:
                    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out_f,
                                            stderr=err_f, env=env)
                except OSError as e:
                    os.write(w, f"ERR {e.strerror}".encode())
                    os._exit(0)
            pid = proc.pid
            os.rename(out_path, os.path.join(jobs, f"api-{pid}.out"))
            os.rename(err_path, os.path.join(jobs, f"api-{pid}.err"))
            os.write(w, f"PID {pid}".encode())
            os.close(w)
            try:
                proc.stdin.write(data or b"")
                proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = proc.wait()
            tmp = os.path.join(jobs, f"api-{pid}.rc.tmp")
            with open(tmp, "w") as f:
                f.write(str(rc))
            os.rename(tmp, os.path.join(jobs, f"api-{pid}.rc"))
        finally:
            os._exit(0)
    os.close(w)
    said = b""
    while True:
        chunk = os.read(r, 256)
        if not chunk:
            break
        said += chunk
    os.close(r)
    said = said.decode()
    if said.startswith("PID "):
        return int(said[4:])
    why = said[4:] if said.startswith("ERR ") else "unknown error"
    die(f"Agent error: Failed to execute child process \u201c{argv[0]}\u201d ({why})")


def agent_exec_status(d, pid):
    jobs = os.path.join(d, "jobs")
    out_path = os.path.join(jobs, f"api-{pid}.out")
    if not os.path.exists(out_path):
        die("Agent error: Invalid parameter 'pid'")
    rc_path = os.path.join(jobs, f"api-{pid}.rc")
    if not os.path.exists(rc_path):
        return {"exited": 0}
    rc = int(read(rc_path, "0"))
    err_path = os.path.join(jobs, f"api-{pid}.err")
    res = result_of(rc, open(out_path, "rb").read(), open(err_path, "rb").read())
    for p in (out_path, err_path, rc_path):
        os.unlink(p)
    return res


def pvesh_handle(name, vmid, params):
    """The handler's code, on the node the guest must be on."""
    kind = "lxc" if name == "lxc_status" else "qemu"
    d = guest_dir(kind, vmid)
    if name == "qemu_status":
        res = {"vmid": int(vmid), "name": vm_name(d, vmid), "ha": {"managed": 0},
               "status": "running" if is_running(d) else "stopped"}
        if is_running(d):
            res["qmpstatus"] = read(os.path.join(d, "status"), "running")
        if read(os.path.join(d, "agent"), "running") != "unconfigured":
            res["agent"] = 1
        return res
    if name == "lxc_status":
        return {"vmid": int(vmid), "name": vm_name(d, vmid), "ha": {"managed": 0},
                "type": "lxc", "status": "running" if is_running(d) else "stopped"}
    if name == "agent_ping":
        assert_agent_available(d, vmid)
        return {"result": {}}
    if name == "agent_exec":
        cmd = params["command"]
        data = params.get("input-data")
        assert_agent_available(d, vmid)
        return {"pid": agent_spawn(d, vmid, cmd, None if data is None else data.encode())}
    if name == "agent_exec_status":
        assert_agent_available(d, vmid)
        return agent_exec_status(d, int(params["pid"]))
    die(f"fake pvesh: no handler {name}")


def pvesh_main(args):
    raw = list(args)
    noproxy = False
    while args[:1] in (["--noproxy"], ["--nooutput"]):
        noproxy = noproxy or args[0] == "--noproxy"
        args = args[1:]
    record("pvesh", raw)
    if not args:
        die("400 not enough arguments\npvesh <COMMAND> [ARGS] [OPTIONS]", 255)
    cmd = args[0]
    if cmd not in PVESH_COMMANDS:
        die(f"400 unknown command 'pvesh {cmd}'\nUSAGE: pvesh <COMMAND> [ARGS] [OPTIONS]")
    if len(args) < 2:
        die("400 not enough arguments\npvesh " + cmd + " <api_path> [OPTIONS]")
    path = args[1]
    found = pvesh_find_handler(PVESH_COMMANDS[cmd], path)
    if found is None:
        sys.stderr.write(f"No '{cmd}' handler defined for '{path}'\n")
        sys.exit(1)
    name, node, vmid, schema = found
    opts = pvesh_get_options(args[2:], dict(PVESH_OWN, **schema))
    noproxy = noproxy or opts.pop("noproxy", False) is True
    fmt = opts.pop("output-format", "text")
    quiet = opts.pop("quiet", False)
    for k in ("human-readable", "noborder", "noheader"):
        opts.pop(k, None)
    if node not in ("localhost", local_node()):
        if noproxy:
            die("proxy loop detected - aborting")
        data = pvesh_proxy(node, cmd, path, opts, raw)
    else:
        if "input-data" in opts and len(opts["input-data"]) > INPUT_DATA_LIMIT:
            die("400 Parameter verification failed.\n"
                f"input-data: value may only be {INPUT_DATA_LIMIT} characters long")
        data = pvesh_handle(name, vmid, opts)
    if not quiet:
        pvesh_print(data, fmt)
    return 0


def maybe_hang(tool, args):
    """Hang for ever when the guest named in ARGS asks for it (see above)."""
    kind = "qemu" if tool == "qm" else "lxc"
    for a in args:
        if not a.isdigit():
            continue
        d = os.path.join(state_root(), kind, a)
        what = read(os.path.join(d, "hang"), "")
        if what and what in " ".join(args):
            record(tool, args)
            with open(os.path.join(d, "hang.pid"), "w") as f:
                f.write(f"{os.getpid()}\n")
            while True:
                time.sleep(3600)
        return


if __name__ == "__main__":
    tool = os.environ.pop("FAKE_PVE_TOOL", None) or os.path.basename(sys.argv[0])
    if tool in ("qm", "pct"):
        maybe_hang(tool, sys.argv[1:])
    if tool == "pvesh":
        sys.exit(pvesh_main(sys.argv[1:]))
    if tool == "qm":
        sys.exit(qm_main(sys.argv[1:]))
    if tool == "pct":
        sys.exit(pct_main(sys.argv[1:]))
    die(f"fake pve: call me as qm, pct or pvesh, not {tool}")
