"""The rehearsal stack: a throwaway copy of the CRM application next to the dry run's sandbox database.

The copy is the production container as the engine describes it (its own environment,
command, limits and volumes, not its image's defaults) on the sandbox's internal network,
so it reaches the sandbox database and nothing else: no published port, no route to
production, the database settings in its environment pointed at the sandbox (the sandbox
password travels in the container's environment only, never in the journal). Volumes are
copied into throwaway volumes, so the copy cannot write production's files. Everything
carries the sandbox labels (plus crmops.stack) so `crmops sandbox cleanup` finds leftovers,
and the stack is removed with the sandbox on success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from crmops.dburl import parse
from crmops.playbooks.dockerswap import container_spec
from crmops.playbooks.model import DockerStep, Playbook
from crmops.playbooks.steps import StepFailed, expand_env
from crmops.playbooks.template import render
from crmops.sandbox import guard
from crmops.sandbox.docker import LABEL, STACK_LABEL

#: environment names that hold database settings, by the part they hold (checked on the upper-cased name)
DB_ENV_HINTS = {
    "url": ("DATABASE_URL", "DB_URL", "DATABASE_URI", "DB_URI", "SQLALCHEMY_DATABASE_URI", "DSN"),
    "host": ("DB_HOST", "DATABASE_HOST", "PGHOST", "MYSQL_HOST", "POSTGRES_HOST", "DB_SERVER"),
    "port": ("DB_PORT", "DATABASE_PORT", "PGPORT", "MYSQL_PORT", "POSTGRES_PORT"),
    "database": ("DB_NAME", "DB_DATABASE", "DATABASE_NAME", "PGDATABASE", "MYSQL_DATABASE", "POSTGRES_DB"),
    "user": ("DB_USER", "DB_USERNAME", "DATABASE_USER", "PGUSER", "MYSQL_USER", "POSTGRES_USER"),
    "password": ("DB_PASSWORD", "DB_PASS", "DATABASE_PASSWORD", "PGPASSWORD", "MYSQL_PASSWORD",
                 "POSTGRES_PASSWORD"),
}
#: settings of the production container the copy does not take: they would reach production or this host
NOT_COPIED = "published ports, restart policy, networks, devices, privileges, host namespaces"
HOST_CONFIG_KEPT = ("Memory", "MemorySwap", "NanoCpus", "CpuShares", "CpuQuota", "CpuPeriod", "ShmSize", "Tmpfs",
                    "Ulimits", "Init", "ReadonlyRootfs", "CapDrop", "SecurityOpt")


class NoStack(Exception):
    """No copy of the application can be started; the message is the reason steps are not rehearsed."""


@dataclass
class RehearsalStack:
    """The copy of the application: its container name, where it answers, what it was given."""

    client: Any
    network: str
    name: str
    source: str
    image: str
    port: int
    prod_prefixes: list[str]
    labels: dict[str, str]
    env_rewritten: list[str] = field(default_factory=list)
    volumes: list[dict[str, str]] = field(default_factory=list)
    has_shell: bool = True
    started_s: float = 0.0

    # -- where it answers ----------------------------------------------------------------

    def base_url(self) -> str:
        """http://<its address on the private network>:<port>; read each time: a swap gives a new address."""
        c = self.client.containers.get(self.name)
        ip = c.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        return f"http://{ip}:{self.port}"

    def map_url(self, url: str) -> str | None:
        """url with production's app address replaced by the copy's, or None if it points elsewhere."""
        for prefix in self.prod_prefixes:
            if url == prefix or url.startswith(prefix.rstrip("/") + "/") or url.startswith(prefix + "?"):
                return self.base_url() + url[len(prefix.rstrip("/")):]
        return None

    def image_now(self) -> str:
        c = self.client.containers.get(self.name)
        return c.attrs["Config"]["Image"] if c.status == "running" else f"{c.attrs['Config']['Image']} ({c.status})"

    def describe(self) -> dict[str, Any]:
        return {"app": self.name, "source": self.source, "image": self.image, "network": self.network,
                "internal": True, "port": self.port, "answers_for": self.prod_prefixes,
                "env_rewritten": self.env_rewritten, "volumes_copied": self.volumes, "not_copied": NOT_COPIED,
                "started_s": self.started_s}

    # -- running commands in it ----------------------------------------------------------

    def exec_shell(self, command: str | list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
        """A command inside the copy (as root), where every file it touches belongs to the throwaway copy."""
        argv = ["sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        api = self.client.api
        exec_id = api.exec_create(self.name, argv, environment=env, user="0", stdout=True, stderr=True)["Id"]
        out = api.exec_start(exec_id, demux=False)
        deadline = time.monotonic() + timeout
        while True:
            info = api.exec_inspect(exec_id)
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0), (out or b"").decode(errors="replace")
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out after {timeout:g}s in the rehearsal copy")
            time.sleep(0.1)

    # -- removal -------------------------------------------------------------------------

    def remove(self) -> None:
        with guard.uninterrupted():
            remove_stack(self.client, self.network)
            guard.forget(self.name)

    def __enter__(self) -> RehearsalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def remove_stack(client: Any, network: str) -> None:
    """Every container (the copy, a parked one a swap left, a volume copier) and volume of a sandbox's stack."""
    from docker.errors import APIError, NotFound

    for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{STACK_LABEL}={network}"}):
        try:
            c.remove(force=True, v=True)
        except NotFound:
            pass
    for v in client.volumes.list(filters={"label": f"{STACK_LABEL}={network}"}):
        try:
            v.remove(force=True)
        except (NotFound, APIError):
            pass


def stack_source(playbook: Playbook) -> tuple[str, str]:
    """("container", NAME) or ("image", IMAGE) to copy; NoStack with the reason when there is nothing."""
    spec = playbook.rehearsal
    context = {"vars": dict(playbook.vars), "playbook": {"name": playbook.name, "from_version": playbook.from_version,
                                                         "to_version": playbook.to_version}}
    if spec is not None and spec.skip:
        raise NoStack(f"the playbook's rehearsal block says: {spec.skip}")
    if spec is not None and spec.image:
        return "image", str(render(spec.image, context))
    if spec is not None and spec.container:
        return "container", str(render(spec.container, context))
    for _, _, step in playbook.all_steps():
        if isinstance(step, DockerStep):
            name = render(step.container, context, pending_ok=True)
            if isinstance(name, str) and "<" not in name:
                return "container", name
    raise NoStack("the CRM does not run in a container this playbook swaps, and the playbook has no rehearsal: "
                  "block naming an image to start a copy from")


def start_stack(client: Any, network: str, sandbox_url: str, production_url: str, playbook: Playbook,
                base_labels: dict[str, str]) -> RehearsalStack:
    """Start the copy on the sandbox's network and wait until it listens; NoStack or CrmopsError otherwise."""
    from docker.errors import APIError, ImageNotFound, NotFound

    kind, what = stack_source(playbook)
    spec_cfg = playbook.rehearsal
    name = f"{network}-app"
    labels = {**base_labels, LABEL: "1", STACK_LABEL: network, "crmops.engine": "app"}
    guard.register(name, lambda: remove_stack(client, network))
    t0 = time.monotonic()
    if kind == "container":
        try:
            prod = client.containers.get(what)
        except NotFound:
            raise NoStack(f"no container named {what!r} to copy") from None
        attrs = prod.attrs
        try:
            image_config = client.images.get(attrs["Image"]).attrs.get("Config") or {}
        except ImageNotFound:
            image_config = {}
        image = attrs["Config"]["Image"]
        spec = container_spec(attrs, image_config, image)
        spec.pop("_extra_networks", None)
        mounts = attrs.get("Mounts") or []
        prefixes = _published_prefixes(attrs)
        source = f"container {what}"
    else:
        image = what
        try:
            image_config = client.images.get(image).attrs.get("Config") or {}
        except ImageNotFound:
            raise NoStack(f"the rehearsal image {image} is not present locally (docker pull or docker load it)"
                          ) from None
        spec = {"Image": image, "Env": [], "Labels": {}, "ExposedPorts": image_config.get("ExposedPorts") or {},
                "HostConfig": {}}
        mounts = []
        prefixes = []
        source = f"image {image}"
    port = (spec_cfg.port if spec_cfg and spec_cfg.port else None) or _exposed_port(spec, image_config)
    if spec_cfg and spec_cfg.app_url:
        prefixes = [render(spec_cfg.app_url, {"vars": dict(playbook.vars)}).rstrip("/")]
    if not prefixes:
        raise NoStack(f"no production URL to stand in for: {source} publishes no port on this host; set "
                      "rehearsal.app_url")
    env, rewritten = rewrite_env(spec.get("Env") or [], production_url, sandbox_url,
                                 dict(spec_cfg.database_env) if spec_cfg else {})
    for k, v in (spec_cfg.env if spec_cfg else {}).items():
        env = [e for e in env if not e.startswith(f"{k}=")] + [f"{k}={expand_env(str(v))}"]
    host_config = {k: v for k, v in (spec.get("HostConfig") or {}).items() if k in HOST_CONFIG_KEPT and v}
    host_config.update({"NetworkMode": network, "RestartPolicy": {"Name": "no"}})
    stack = RehearsalStack(client, network, name, source, image, port, prefixes, labels, rewritten)
    try:
        host_config["Mounts"] = _copy_mounts(client, stack, mounts, image)
        own_labels = {k: v for k, v in (spec.get("Labels") or {}).items() if not k.startswith("com.docker.compose")}
        create = {k: v for k, v in spec.items() if k not in ("HostConfig", "NetworkingConfig", "Labels", "Env")}
        create.update({"Env": env, "Labels": {**own_labels, **labels}, "HostConfig": host_config,
                       "NetworkingConfig": {"EndpointsConfig": {network: {}}}})
        cid = client.api.create_container_from_config(create, name=name)["Id"]
        client.api.start(cid)
        _wait_listening(stack)
        stack.has_shell = _has_shell(stack)
    except APIError as e:
        stack.remove()
        raise StackFailed(f"the rehearsal copy of the app ({source}) did not start: {e.explanation or e}") from None
    except BaseException:
        stack.remove()
        raise
    stack.started_s = round(time.monotonic() - t0, 2)
    return stack


class StackFailed(Exception):
    """The copy of the application did not start: a blocker (production's own app may not survive a restart)."""


def rewrite_env(env: list[str], production_url: str, sandbox_url: str,
                explicit: dict[str, str]) -> tuple[list[str], list[str]]:
    """The container's environment with every database setting pointed at the sandbox; (env, names changed).

    A variable is rewritten when the playbook names it (rehearsal.database_env), when its name says
    which part it holds (DB_HOST, DATABASE_URL …), or when its value is production's URL or host.
    """
    prod, box = parse(production_url), parse(sandbox_url)
    parts = {"url": None, "host": box.host or "", "port": str(box.port or ""), "database": box.database or "",
             "user": box.username or "", "password": box.password or ""}
    prod_parts = {"host": prod.host, "port": str(prod.port) if prod.port else None}
    out, changed = [], []
    for item in env:
        key, _, value = item.partition("=")
        part = explicit.get(key) or next((p for p, names in DB_ENV_HINTS.items() if key.upper() in names), None)
        if part is None and "://" in value and _same_server(value, prod):
            part = "url"
        if part is None and prod_parts["host"] and value == prod_parts["host"] and prod_parts["host"] not in (
                "localhost",):
            part = "host"
        if part is None:
            out.append(item)
            continue
        new = _url_like(value, box) if part == "url" else parts[part]
        out.append(f"{key}={new}")
        changed.append(key)
    for key, part in explicit.items():  # named but not set in the container: given to the copy
        if key not in {e.partition("=")[0] for e in env}:
            out.append(f"{key}={_url_like('', box) if part == 'url' else parts[part]}")
            changed.append(key)
    return out, changed


def _same_server(value: str, prod: Any) -> bool:
    try:
        u = urllib.parse.urlsplit(value)
        return (u.hostname or "") == (prod.host or "") and (u.port or prod.port) == prod.port
    except ValueError:
        return False


def _url_like(value: str, box: Any) -> str:
    """The sandbox's URL in the form value had (its scheme and query kept), or a plain one."""
    user = urllib.parse.quote(box.username or "", safe="")
    password = urllib.parse.quote(box.password or "", safe="")
    netloc = f"{user}:{password}@{box.host}:{box.port}"
    if value and "://" in value:
        u = urllib.parse.urlsplit(value)
        return urllib.parse.urlunsplit((u.scheme, netloc, f"/{box.database}", u.query, u.fragment))
    return f"{box.drivername.split('+')[0]}://{netloc}/{box.database}"


def _published_prefixes(attrs: dict[str, Any]) -> list[str]:
    """The URLs under which production's container answers on this host (its published ports)."""
    out: list[str] = []
    for _, bindings in ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).items():
        for b in bindings or []:
            port = b.get("HostPort")
            if not port:
                continue
            host = b.get("HostIp") or "0.0.0.0"
            hosts = ["127.0.0.1", "localhost"] if host in ("", "0.0.0.0", "127.0.0.1", "::") else [host]
            out += [f"http://{h}:{port}" for h in hosts]
    return out


def _exposed_port(spec: dict[str, Any], image_config: dict[str, Any]) -> int:
    """The container port a published host port leads to, else the first exposed one, else 8080."""
    bindings = (spec.get("HostConfig") or {}).get("PortBindings") or {}
    for key in list(bindings) + list(spec.get("ExposedPorts") or {}) + list(image_config.get("ExposedPorts") or {}):
        number, _, proto = key.partition("/")
        if proto in ("", "tcp") and number.isdigit():
            return int(number)
    return 8080


def _copy_mounts(client: Any, stack: RehearsalStack, mounts: list[dict[str, Any]], image: str) -> list[dict]:
    """Throwaway copies of the container's volumes and bind-mounted folders; a bound file is mounted read-only."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(mounts):
        if m.get("Type") not in ("volume", "bind"):
            continue
        src = m["Name"] if m["Type"] == "volume" else m["Source"]
        if m["Type"] == "bind" and not os.path.isdir(src):
            out.append({"Type": "bind", "Source": src, "Target": m["Destination"], "ReadOnly": True})
            stack.volumes.append({"target": m["Destination"], "from": src, "as": "read-only bind (a file)"})
            continue
        vol = f"{stack.name}-v{i}"
        client.volumes.create(vol, labels=stack.labels)
        copier = client.containers.run(image, entrypoint=["sh", "-c", "cp -a /crmops-from/. /crmops-to/"],
                                       command=[], user="0", network_mode="none", labels=stack.labels,
                                       volumes={src: {"bind": "/crmops-from", "mode": "ro"},
                                                vol: {"bind": "/crmops-to", "mode": "rw"}},
                                       detach=True, name=f"{stack.name}-copy{i}")
        code = copier.wait(timeout=3600).get("StatusCode")
        copier.remove(force=True)
        if code:
            raise StackFailed(f"copying {src} for the rehearsal copy failed (exit {code})")
        out.append({"Type": "volume", "Source": vol, "Target": m["Destination"], "ReadOnly": not m.get("RW", True)})
        stack.volumes.append({"target": m["Destination"], "from": src, "as": vol})
    return out


def _wait_listening(stack: RehearsalStack, seconds: float = 60) -> None:
    """Until the copy accepts a TCP connection on its port (not a health check: that is the playbook's)."""
    import socket

    deadline = time.monotonic() + seconds
    while True:
        c = stack.client.containers.get(stack.name)
        if c.status in ("exited", "dead"):
            tail = c.logs(tail=3).decode(errors="replace").strip().splitlines()
            raise StackFailed(f"the rehearsal copy of the app ({stack.source}) exited at start: "
                              f"{tail[-1] if tail else 'no output'}")
        ip = c.attrs["NetworkSettings"]["Networks"].get(stack.network, {}).get("IPAddress")
        if ip:
            try:
                with socket.create_connection((ip, stack.port), timeout=1):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise StackFailed(f"the rehearsal copy of the app ({stack.source}) did not listen on port {stack.port} "
                              f"within {seconds:g}s (rehearsal.port names the port the CRM listens on)")
        time.sleep(0.2)


def _has_shell(stack: RehearsalStack) -> bool:
    try:
        code, _ = stack.exec_shell("true", {}, 10)
        return code == 0
    except Exception:  # no sh in the image: shell steps cannot run inside the copy
        return False
