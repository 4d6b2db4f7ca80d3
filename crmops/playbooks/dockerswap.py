"""Swap a running container to another image tag, keeping everything else it was started with.

The new container gets the old one's host configuration (ports, volumes, restart policy,
limits, network) and the settings a person gave it (environment, command, labels) but
not the old image's own defaults, so an image's ENV does not leak into its successor.
The old container is kept, stopped, until the new one runs; if the new one cannot start,
the old one comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crmops.errors import SandboxUnavailable
from crmops.playbooks.model import DockerStep, Step
from crmops.playbooks.steps import StepContext, StepFailed, StepResult


def _client() -> Any:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - a dependency of crmops
        raise SandboxUnavailable("the docker Python package is not installed") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as e:
        from crmops.sandbox.docker import why_unreachable

        raise SandboxUnavailable(f"the Docker engine does not answer: {why_unreachable(e)}",
                                 hint="start Docker or set DOCKER_HOST") from None
    return client


def _own(value: Any, image_default: Any) -> Any:
    """A setting the container was given, or None where it only inherited the image's."""
    return None if value == image_default else value


def container_spec(attrs: dict[str, Any], image_config: dict[str, Any], image: str) -> dict[str, Any]:
    """The create-container config for image, from a container's attrs minus its image's defaults."""
    cfg = attrs["Config"]
    image_env = set(image_config.get("Env") or [])
    image_labels = image_config.get("Labels") or {}
    spec: dict[str, Any] = {
        "Image": image,
        "Env": [e for e in cfg.get("Env") or [] if e not in image_env],
        "Labels": {k: v for k, v in (cfg.get("Labels") or {}).items() if image_labels.get(k) != v},
        "ExposedPorts": cfg.get("ExposedPorts") or {},
        "HostConfig": attrs["HostConfig"],
        "Tty": cfg.get("Tty", False),
        "OpenStdin": cfg.get("OpenStdin", False),
    }
    for key in ("Cmd", "Entrypoint", "WorkingDir", "User", "StopSignal"):
        own = _own(cfg.get(key), image_config.get(key))
        if own:
            spec[key] = own
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    short = attrs["Id"][:12]
    endpoints = {name: {"Aliases": [a for a in (n.get("Aliases") or []) if a != short] or None,
                        "IPAMConfig": n.get("IPAMConfig")}
                 for name, n in networks.items()}
    mode = attrs["HostConfig"].get("NetworkMode", "")
    if mode in endpoints:  # the create call joins one network; the others are connected after
        spec["NetworkingConfig"] = {"EndpointsConfig": {mode: endpoints.pop(mode)}}
    spec["_extra_networks"] = endpoints
    return spec


PARKED = "-crmops-prev-"


def swap_image(name: str, image: str, *, stop_timeout: int = 10, client: Any = None,
               noted: Callable[[str], None] = lambda previous: None, restart: bool = False) -> tuple[str, str]:
    """Run container name on image instead; returns (previous image, new container id). Idempotent.

    noted(previous) is called before anything changes. A container parked by a swap that was
    killed half-way is taken back first. restart: a container already on image is restarted
    (an app that reads its schema at start, after its own migration) instead of left alone.
    """
    from docker.errors import APIError, ImageNotFound, NotFound

    client = client or _client()
    try:
        old = client.containers.get(name)
        if old.status != "running" and _parked(client, name):  # killed after creating the new one
            old.remove(force=True, v=False)
            old = _unpark(client, name)
    except NotFound:
        old = _unpark(client, name)
    previous = old.attrs["Config"]["Image"]
    noted(previous)
    if previous == image and old.status == "running":
        if restart:
            old.restart(timeout=stop_timeout)
            _wait_running(client, old.id, name, image)
        return previous, old.id  # already there (a resumed or repeated step)
    try:
        client.images.get(image)
    except ImageNotFound:
        raise StepFailed(f"image {image} is not present locally (docker pull or docker load it first)") from None
    try:
        image_config = client.images.get(old.attrs["Image"]).attrs.get("Config") or {}
    except ImageNotFound:
        image_config = {}
    spec = container_spec(old.attrs, image_config, image)
    extra = spec.pop("_extra_networks")
    parked = f"{name}{PARKED}{int(time.time())}"
    old.stop(timeout=stop_timeout)
    old.rename(parked)
    new_id = None
    try:
        new_id = client.api.create_container_from_config(spec, name=name)["Id"]
        for net, endpoint in extra.items():
            client.api.connect_container_to_network(new_id, net, aliases=endpoint.get("Aliases"))
        client.api.start(new_id)
        _wait_running(client, new_id, name, image)
    except (APIError, StepFailed) as e:
        if new_id:
            try:
                client.api.remove_container(new_id, force=True, v=False)
            except APIError:
                pass
        old.rename(name)
        old.start()
        reason = e if isinstance(e, StepFailed) else (e.explanation or e)
        raise StepFailed(f"{name} did not start on {image} ({reason}); it runs on {previous} again") from None
    old.remove(v=False)
    return previous, new_id


def _parked(client: Any, name: str) -> list[Any]:
    return sorted((c for c in client.containers.list(all=True, ignore_removed=True, filters={"name": f"{name}{PARKED}"})
                   if c.name.startswith(f"{name}{PARKED}")), key=lambda c: c.name)


def _unpark(client: Any, name: str) -> Any:
    """The container a killed swap left stopped under its parked name, renamed back; else StepFailed."""
    parked = _parked(client, name)
    if not parked:
        raise StepFailed(f"no container named {name!r}")
    old = parked[-1]
    old.rename(name)
    old.start()
    old.reload()
    return old


def _wait_running(client: Any, container_id: str, name: str, image: str, seconds: float = 3.0) -> None:
    """Still running a moment after start: an image that exits at once fails here, not at the health check."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = client.api.inspect_container(container_id)["State"]
        if state.get("Status") in ("exited", "dead"):
            raise StepFailed(f"container exited with code {state.get('ExitCode')}")
        time.sleep(0.25)


def run_docker(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """The docker step: swap params.container to params.image, remembering the previous tag."""
    assert isinstance(step, DockerStep)
    previous, new_id = swap_image(params["container"], params["image"], stop_timeout=int(params["stop_timeout"]),
                                  noted=lambda prev: ctx.progress({"previous_image": prev}),
                                  restart=bool(params.get("restart")))
    verb = ("restarted on" if params.get("restart") else "already on") if previous == params["image"] \
        else f"{previous} ->"
    return StepResult(True, {"previous_image": previous, "image": params["image"], "container": new_id[:12]},
                      f"{params['container']}: {verb} {params['image']}")


def current_image(name: str) -> str | None:
    """The image a container runs now (read-only, for the dry run's plan), or None if it is absent."""
    from docker.errors import NotFound

    try:
        return _client().containers.get(name).attrs["Config"]["Image"]
    except NotFound:
        return None


def image_present(image: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        _client().images.get(image)
        return True
    except ImageNotFound:
        return False
