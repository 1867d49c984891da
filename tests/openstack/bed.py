#!/usr/bin/env python3
"""A small OpenStack on 127.0.0.1 for sniffer's end-to-end test: keystone and glance-api under
uWSGI with devstack's process names, all state in one directory.

usage: bed.py VENV STATE_DIR [--swift SWIFT_VENV] [--apache] [--tls] [--bind ADDR]
              [--keystone URL --region NAME --glance-user NAME]

Like devstack: MariaDB (Debian's mariadbd, a datadir of its own, 127.0.0.1:3306) holds keystone's
and glance's databases (PyMySQL), and memcached (127.0.0.1:11211) caches for keystone
(`[cache]` with oslo_cache.memcache_pool) and for glance's keystonemiddleware
(`memcached_servers`). Configures keystone (fernet tokens, admin/secret bootstrapped, endpoints
on 127.0.0.1) and glance-api (file store, keystonemiddleware auth_token with its own `glance`
service user), starts both, then prints one JSON line:

  {"keystone": {"pid": N, "port": N, "log": PATH}, "glance": {...}, "env": {OS_* ...}}

With --swift, a single-node swift (2.38) on 127.0.0.1 too: proxy on :8080 with keystonemiddleware
and keystoneauth, account/container/object servers on :6202/:6201/:6200, rings over a plain
directory, and glance stores images in it (container `glance`, made on first put). The JSON
then has "swift": {"proxy": PID, "account": PID, "container": PID, "object": PID}.

With --apache, devstack's topology: Apache (Debian's apache2 with mod_proxy_uwsgi, a config of
its own under STATE_DIR, listening on 127.0.0.1:80) proxies /identity to keystone's uWSGI
`--socket` (a unix socket, uwsgi protocol) and /image to glance's uWSGI on 127.0.0.1:60999; the
catalog lists http://127.0.0.1/identity and http://127.0.0.1/image. The JSON then has
"apache": {"pid": PID, "log": PATH}.

With --tls (implies --apache), devstack's tls-proxy: Apache speaks HTTPS (mod_ssl) on
127.0.0.1:443 instead, with a certificate for 127.0.0.1 the bed makes (STATE_DIR/tls/cert.pem,
which clients take as their CA: OS_CACERT for the CLI, keystonemiddleware's `cafile` for
glance); the catalog lists https://127.0.0.1/identity and https://127.0.0.1/image, so glance
calls keystone through HTTPS too. The JSON then has "cacert": PATH.

With --bind ADDR, keystone and glance-api listen on ADDR (a lab host's address) instead of
127.0.0.1, and the catalog lists ADDR. With --keystone URL (a keystone/v3 URL another bed
started), no keystone of its own: glance-api (service user --glance-user) checks tokens there and
is listed in region --region; the JSON's "keystone" is then null. That is a second host of a
multi-node devstack.

It waits until its stdin closes or it gets SIGTERM; it then stops the services it started and
nothing else. The services die with this script (PR_SET_PDEATHSIG), however it ends.
"""
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

venv, state = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
opts = sys.argv[3:]
swift_venv = os.path.abspath(opts[opts.index("--swift") + 1]) if "--swift" in opts else None
tls = "--tls" in opts
apache = "--apache" in opts or tls
opt = lambda name, default: opts[opts.index(name) + 1] if name in opts else default  # noqa: E731
bind = opt("--bind", "127.0.0.1")
remote_keystone = opt("--keystone", None)
region = opt("--region", "RegionOne")
glance_user = opt("--glance-user", "glance")
os.makedirs(state, exist_ok=True)
# The bed's addresses are reached directly, whatever proxy the environment names.
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "*"
bin_ = lambda name: os.path.join(venv, "bin", name)  # noqa: E731
children = []


def free_port():
    s = socket.socket()
    s.bind((bind, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(*args, env=None):
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "setup.err"), "a"))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start_uwsgi(name, port, module, env_var, env_val, log):
    """uWSGI master + 2 workers, titled like devstack (`keystone uWSGI master`); `port` a TCP
    port (HTTP) or a unix socket path (the uwsgi protocol, for Apache's mod_proxy_uwsgi)."""
    listen = (["--socket", port, "--chmod-socket=666"] if isinstance(port, str)
              else ["--http11-socket", f"{bind}:{port}"])
    p = subprocess.Popen(
        [
            bin_("uwsgi"), *listen, "--module", module,
            "--home", venv, "--master", "--processes", "2", "--threads", "1",
            "--procname-prefix-spaced", name, "--env", f"{env_var}={env_val}",
            "--logto", log, "--die-on-term", "--need-app", "--lazy-apps",
            "--buffer-size", "65535", "--http-keepalive",
        ],
        # Same process group as this script: whoever stops the bed's group stops them too.
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_bed,
    )
    children.append(p)
    return p


def die_with_bed():
    """In the child before exec: SIGKILL when this script dies, however it dies. swift's
    servers call setsid(), so the test's kill of the bed's process group would miss them."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(*args):
    """A server started by the bed, stopped with it."""
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(state, "servers.err"), "a"),
                         preexec_fn=die_with_bed)
    children.append(p)
    return p.pid


def wait_http(url, deadline=120):
    end = time.time() + deadline
    ctx = None
    if tls:
        import ssl

        ctx = ssl.create_default_context(cafile=cacert)
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2, context=ctx).read()
            return
        except urllib.error.HTTPError as e:
            # It answers (glance's version list is a 300); a 5xx is Apache saying the service
            # behind it is not up yet.
            if e.code < 500:
                return
            time.sleep(0.3)
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {deadline}s")


def stop(*_):
    for p in children:
        p.terminate()
    for p in children:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)

def start_mariadb():
    """mariadbd with a datadir of its own on 127.0.0.1:3306 (devstack's port), databases
    keystone and glance; no passwords (grant tables skipped: a test's own server)."""
    probe = socket.socket()
    # As mariadbd does: connections of an earlier run in TIME_WAIT do not take the port.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", 3306))
    except OSError as e:
        raise SystemExit(f"127.0.0.1:3306 is taken ({e}); the bed's MariaDB needs it, as devstack's")
    finally:
        probe.close()
    data = os.path.join(state, "mysql")
    sock = os.path.join(state, "mysql.sock")
    run("mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
        "--auth-root-authentication-method=normal", "--skip-test-db")
    spawn("/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}",
          "--port=3306", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
          f"--pid-file={state}/mysql.pid", f"--log-error={state}/mysql.err")
    end = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", 3306), timeout=1).close()
            break
        except OSError:
            if time.time() > end:
                raise SystemExit("MariaDB did not listen on 3306 in 60s")
            time.sleep(0.2)
    run("mariadb", "--no-defaults", f"--socket={sock}", "-e",
        "CREATE DATABASE keystone; CREATE DATABASE glance;")


def start_memcached():
    """memcached on 127.0.0.1:11211, devstack's."""
    spawn("memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", "11211", "-U", "0", "-m", "64")
    end = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", 11211), timeout=1).close()
            return
        except OSError:
            if time.time() > end:
                raise SystemExit("memcached did not listen on 11211 in 30s")
            time.sleep(0.1)


def make_cert(d):
    """A self-signed certificate for 127.0.0.1 (clients take it as their CA)."""
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", key, "-out", cert)
    os.chmod(key, 0o644)  # Apache's workers run as www-data
    return cert, key


def start_apache(ksock, gport):
    """Apache in front, as devstack sets it up, with a config of its own."""
    port = 443 if tls else 80
    probe = socket.socket()
    # As Apache does: connections of an earlier run in TIME_WAIT do not take the port.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
    except OSError as e:
        raise SystemExit(f"127.0.0.1:{port} is taken ({e}); the bed's Apache needs it, as devstack's")
    finally:
        probe.close()
    ssl_conf = f"""LoadModule socache_shmcb_module {{mods}}/mod_socache_shmcb.so
LoadModule ssl_module {{mods}}/mod_ssl.so
SSLEngine on
SSLCertificateFile {cacert}
SSLCertificateKeyFile {tls_key}
SSLSessionCache shmcb:{{root}}/run/ssl_scache(512000)
""" if tls else ""
    root = os.path.join(state, "apache")
    os.makedirs(os.path.join(root, "run"), exist_ok=True)
    mods = "/usr/lib/apache2/modules"
    conf = os.path.join(root, "apache2.conf")
    log = os.path.join(root, "access.log")
    write(conf, f"""ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {root}/apache2.pid
DefaultRuntimeDir {root}/run
ErrorLog {root}/error.log
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule proxy_module {mods}/mod_proxy.so
LoadModule proxy_http_module {mods}/mod_proxy_http.so
LoadModule proxy_uwsgi_module {mods}/mod_proxy_uwsgi.so
{ssl_conf.format(mods=mods, root=root)}LogFormat "%h %l %u %t \\"%r\\" %>s %b" common
CustomLog {log} common
ProxyPass "/identity" "unix:{ksock}|uwsgi://uwsgi-uds-keystone" retry=0 acquire=1
ProxyPass "/image" "http://127.0.0.1:{gport}" retry=0
""")
    p = subprocess.Popen(["/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"], stdin=subprocess.DEVNULL,
                         stderr=open(os.path.join(state, "servers.err"), "a"), preexec_fn=die_with_bed)
    children.append(p)
    return {"pid": p.pid, "log": log}


cacert = tls_key = None
if tls:
    cacert, tls_key = make_cert(os.path.join(state, "tls"))
if apache:
    # devstack's ports: keystone behind /identity on a unix socket, glance on :60999.
    kport, gport = os.path.join(state, "keystone.sock"), 60999
    scheme = "https" if tls else "http"
    kbase, gurl = f"{scheme}://127.0.0.1/identity", f"{scheme}://127.0.0.1/image"
else:
    kport, gport = free_port(), free_port()
    kbase, gurl = f"http://{bind}:{kport}", None
    gurl = f"http://{bind}:{gport}"
kurl = remote_keystone or f"{kbase}/v3"
start_mariadb()
start_memcached()
db = "mysql+pymysql://root@127.0.0.1:3306"


def start_keystone():
    """keystone under uWSGI (MariaDB, fernet tokens, admin/secret bootstrapped); its log."""
    kconf = os.path.join(state, "keystone.conf")
    write(kconf, f"""[DEFAULT]
[database]
connection = {db}/keystone
[token]
provider = fernet
[fernet_tokens]
key_repository = {state}/fernet-keys
[fernet_receipts]
key_repository = {state}/fernet-receipts
[credential]
key_repository = {state}/credential-keys
[cache]
enabled = true
backend = oslo_cache.memcache_pool
memcache_servers = 127.0.0.1:11211
""")
    km = lambda *a: run(bin_("keystone-manage"), "--config-file", kconf, *a)  # noqa: E731
    # The key repositories need no database: made while db_sync runs (4-5 s of start each).
    keys = [subprocess.Popen([bin_("keystone-manage"), "--config-file", kconf, what,
                              "--keystone-user", "root", "--keystone-group", "root"],
                             stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(state, "setup.err"), "a"))
            for what in ("fernet_setup", "credential_setup")]
    km("db_sync")
    for p in keys:
        if p.wait() != 0:
            raise SystemExit(f"{' '.join(p.args)} failed: see {state}/setup.err")
    km("bootstrap", "--bootstrap-password", "secret", "--bootstrap-username", "admin",
       "--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
       "--bootstrap-service-name", "keystone", "--bootstrap-region-id", "RegionOne",
       "--bootstrap-admin-url", kurl, "--bootstrap-public-url", kurl, "--bootstrap-internal-url", kurl)
    klog = os.path.join(state, "keystone-requests.log")
    p = start_uwsgi("keystone", kport, "keystone.wsgi.api:application", "OS_KEYSTONE_CONFIG_FILES", kconf, klog)
    return p, klog


keystone, klog, front = None, None, None
if not remote_keystone:
    keystone, klog = start_keystone()
    front = start_apache(kport, gport) if apache else None
wait_http(kurl)

env = dict(os.environ, OS_AUTH_URL=kurl, OS_USERNAME="admin", OS_PASSWORD="secret",
           OS_PROJECT_NAME="admin", OS_USER_DOMAIN_NAME="Default", OS_PROJECT_DOMAIN_NAME="Default",
           OS_IDENTITY_API_VERSION="3", OS_REGION_NAME="RegionOne", OS_INTERFACE="public")
if tls:
    env["OS_CACERT"] = cacert
# What devstack makes with the openstack CLI, made through openstacksdk (what the CLI calls) in
# one process: one `openstack` command per step started Python and the CLI again each time
# (about 3 s each here, 7 to 14 of them a bed).
IDENTITY = r"""
import json, sys
import openstack
idn = openstack.connect().identity
for op, *a in json.loads(sys.argv[1]):
    if op == "project":
        idn.create_project(name=a[0], domain_id="default")
    elif op == "service":
        idn.create_service(name=a[0], type=a[1])
    elif op == "region":
        idn.create_region(id=a[0])
    elif op == "user":
        idn.create_user(name=a[0], domain_id="default", password="secret")
    elif op == "role":
        if idn.find_role(a[0]) is None:
            idn.create_role(name=a[0])
    elif op == "role_add":
        project = idn.find_project(a[0], domain_id="default", ignore_missing=False)
        user = idn.find_user(a[1], domain_id="default", ignore_missing=False)
        role = idn.find_role(a[2], ignore_missing=False)
        idn.assign_project_role_to_user(project, user, role)
    elif op == "endpoints":
        region, kind, url = a
        service = next(s for s in idn.services() if s.type == kind)
        for iface in ("public", "internal", "admin"):
            idn.create_endpoint(service_id=service.id, interface=iface, url=url, region_id=region)
    else:
        raise SystemExit(f"unknown step {op}")
"""


def identity(*steps):
    run(bin_("python3"), "-c", IDENTITY, json.dumps(steps), env=env)


identity(*([["project", "service"], ["service", "glance", "image"]] if not remote_keystone
            else [["region", region]]),
         ["user", glance_user], ["role_add", "service", glance_user, "admin"],
         ["endpoints", region, "image", gurl])


def authtoken(user):
    """keystonemiddleware's options for a service user `user` (password `secret`)."""
    return f"""www_authenticate_uri = {kurl}
auth_url = {kurl}
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = {user}
password = secret
memcached_servers = 127.0.0.1:11211
""" + (f"cafile = {cacert}\n" if tls else "")


def start_swift():
    """Single-node swift; devstack runs each server as `python3 .../swift-X-server CONF`."""
    sbin = lambda name: os.path.join(swift_venv, "bin", name)  # noqa: E731
    etc, node = os.path.join(state, "swift"), os.path.join(state, "srv", "node")
    os.makedirs(os.path.join(node, "d1"), exist_ok=True)
    os.makedirs(etc, exist_ok=True)
    write(os.path.join(etc, "swift.conf"), "[swift-hash]\nswift_hash_path_suffix = sniffer\n"
          "swift_hash_path_prefix = sniffer\n\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
    ports = {"object": 6200, "container": 6201, "account": 6202}
    for name, port in ports.items():
        builder = os.path.join(etc, f"{name}.builder")
        run(sbin("swift-ring-builder"), builder, "create", "6", "1", "1")
        run(sbin("swift-ring-builder"), builder, "add", f"r1z1-127.0.0.1:{port}/d1", "100")
        run(sbin("swift-ring-builder"), builder, "rebalance")
    # Logs go to syslog; there is no /dev/log here, so to a UDP port nobody reads.
    # fallocate_reserve: swift refuses writes (507, a 503 to glance, a 500 to the client) while
    # less than 1% of the disk is free; on a big, busy build disk that is gigabytes still free.
    # 64 MiB left is what the bed's 2 MiB images need.
    common = (f"[DEFAULT]\nbind_ip = 127.0.0.1\nworkers = 0\nswift_dir = {etc}\n"
              "log_udp_host = 127.0.0.1\nlog_udp_port = 9\nfallocate_reserve = 67108864\n")
    pids = {}
    for name, port in ports.items():
        conf = os.path.join(etc, f"{name}-server.conf")
        write(conf, common + f"bind_port = {port}\ndevices = {node}\nmount_check = false\n\n"
              f"[pipeline:main]\npipeline = {name}-server\n\n[app:{name}-server]\nuse = egg:swift#{name}\n")
        pids[name] = spawn(sbin("python3"), sbin(f"swift-{name}-server"), conf)
    identity(["user", "swift"], ["role_add", "service", "swift", "admin"], ["role", "member"],
             ["service", "swift", "object-store"],
             ["endpoints", "RegionOne", "object-store", "http://127.0.0.1:8080/v1/AUTH_%(project_id)s"])
    conf = os.path.join(etc, "proxy-server.conf")
    write(conf, common + f"""bind_port = 8080

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging authtoken keystoneauth proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
{authtoken("swift")}delay_auth_decision = True

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging
""")
    pids["proxy"] = spawn(sbin("python3"), sbin("swift-proxy-server"), conf)
    wait_http("http://127.0.0.1:8080/healthcheck")
    return pids


swift = start_swift() if swift_venv else None

# glance-api
getc = os.path.join(state, "glance-etc")
os.makedirs(getc, exist_ok=True)
with open(os.path.join(venv, "etc", "glance", "glance-api-paste.ini")) as f:
    write(os.path.join(getc, "glance-api-paste.ini"), f.read())
gconf = os.path.join(getc, "glance-api.conf")
write(gconf, f"""[DEFAULT]
enabled_backends = fs:file{", swift:swift" if swift else ""}
[database]
connection = {db}/glance
[keystone_authtoken]
{authtoken(glance_user)}[paste_deploy]
flavor = keystone
[glance_store]
default_backend = {"swift" if swift else "fs"}
[swift]
swift_store_create_container_on_put = True
swift_store_container = glance
swift_store_multi_tenant = False
default_swift_reference = ref1
swift_store_config_file = {getc}/glance-swift.conf
[fs]
filesystem_store_datadir = {state}/images
[os_glance_staging_store]
filesystem_store_datadir = {state}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {state}/tasks
""")
write(os.path.join(getc, "glance-swift.conf"), f"""[ref1]
user = service:glance
key = secret
user_domain_id = default
project_domain_id = default
auth_version = 3
auth_address = {kurl}
""")
run(bin_("glance-manage"), "--config-file", gconf, "db_sync")
glog = os.path.join(state, "glance-requests.log")
glance = start_uwsgi("glance-api", gport, "glance.wsgi.api:application", "OS_GLANCE_CONFIG_DIR", getc, glog)
# glance itself, not through Apache: a request through Apache would leave a pooled connection
# on which a glance worker waits in a read begun before the test's sniffer started.
wait_http(f"http://{bind}:{gport}/")

print(json.dumps({
    "keystone": keystone and {"pid": keystone.pid, "port": kport, "log": klog},
    "glance": {"pid": glance.pid, "port": gport, "log": glog},
    "swift": swift,
    "apache": front,
    "cacert": cacert,
    "env": {k: v for k, v in env.items() if k.startswith("OS_")},
}), flush=True)
sys.stdin.read()
stop()
