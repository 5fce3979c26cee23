#!/usr/bin/env python3
"""Build the operator, router and stand-in images without Docker, then run and check each.

    sudo python3 images/build.py            # `make images`: build, run, check, print a table
    python3 images/build.py --no-check      # build only

No registry is needed: the base is assembled from Debian's packages.
``debootstrap --variant=minbase`` makes a bookworm root filesystem with
``python3`` (3.11), ``python3-venv`` and ``ca-certificates``; buildah imports
it as two local images: ``BUILD_BASE`` (with venv, for the build stage) and
``BASE`` (venv, pip and setuptools wheels purged, docs and apt lists removed,
one squashed layer, for the runtime stage). The Dockerfiles in images/ take
them as ``--build-arg BASE``/``BUILD_BASE`` (python:3.11-slim by default).

Then each image is run with podman, as the chart runs it: UID 65532, a
read-only root filesystem with a tmpfs on /tmp. Checked: the entrypoint
answers ``--help`` (the router serves /healthz on its metrics port and the
stand-in /health), the image's user is 65532, writing to / fails, and the
final image has no compiler, no pip or setuptools, no pip or apt caches and
no sources of the build stage. The sizes are printed.

What this machine (a sandbox) needs, and why (the errors it gives otherwise):

* ``buildah --isolation chroot``: the OCI runtimes cannot start a container
  here ("crun: cgroups in hybrid mode not supported, drop all controllers
  from cgroupv2"), so the build's RUN steps run chrooted.
* ``podman --runtime runc``, and ``--ulimit`` at or below this process's own
  limits: the sandbox withholds CAP_SYS_RESOURCE, so the default limits
  podman asks for fail ("crun: setrlimit `RLIMIT_NOFILE`: Operation not
  permitted", runc: "error setting rlimit type 7: operation not permitted").
* The host's CA bundle is bind-mounted into the build's RUN steps (only
  there, never into a layer): pip reaches PyPI through an egress proxy
  whose CA only the host trusts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("INFERSTACK_CACHE", Path.home() / ".cache" / "inferstack")) / "images"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PACKAGES = ["python3", "python3-venv", "ca-certificates"]  # bookworm's python3 is 3.11, as pyproject requires
BUILD_ONLY = ["python3-venv", "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl"]
# Nothing a running image reads: docs, man pages, translations, apt's package lists and caches, logs.
STRIP = "/usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*"
BASE = "localhost/inferstack/python:3.11-bookworm"
BUILD_BASE = "localhost/inferstack/python-build:3.11-bookworm"
IMAGES = ("operator", "router", "standin")
UID = "65532"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def run(*args: str, check: bool = True, capture: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{(proc.stderr or '')[-3000:]}")
    return proc


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def base_key() -> str:
    return hashlib.sha256(json.dumps([SUITE, PACKAGES, BUILD_ONLY, STRIP]).encode()).hexdigest()[:12]


def image_label(image: str, label: str) -> str | None:
    proc = run("buildah", "inspect", "--type", "image", "--format", f'{{{{index .OCIv1.Config.Labels "{label}"}}}}', image, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_bases() -> None:
    """The two base images, rebuilt only when the package list (base_key) changes."""
    key = base_key()
    if image_label(BASE, "dev.inferstack.base-key") == key and image_label(BUILD_BASE, "dev.inferstack.base-key") == key:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs_tar = CACHE / f"{SUITE}-python3-{key}.tar"
    if not rootfs_tar.exists():
        print(f"debootstrap {SUITE} ({', '.join(PACKAGES)}) ...", flush=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            root = Path(tmp) / "rootfs"
            run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR)
            partial = rootfs_tar.with_suffix(".partial")
            run("tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), ".")
            partial.replace(rootfs_tar)
    ctr = run("buildah", "from", "scratch").stdout.strip()
    try:
        run("buildah", "add", ctr, str(rootfs_tar), "/")
        run("buildah", "run", "--isolation", "chroot", ctr, "--", "sh", "-c", f"apt-get clean && rm -rf {STRIP}")
        config = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--env", "LANG=C.UTF-8",
                  "--label", f"dev.inferstack.base-key={key}", "--cmd", "python3"]  # fmt: skip
        run("buildah", "config", *config, ctr)
        run("buildah", "commit", "--squash", ctr, BUILD_BASE)
        # The runtime base: no venv, no pip or setuptools wheels.
        run("buildah", "run", "--isolation", "chroot", ctr, "--", "sh", "-c", f"dpkg --purge {' '.join(BUILD_ONLY)} && apt-get clean && rm -rf {STRIP}")
        run("buildah", "commit", "--squash", ctr, BASE)
    finally:
        run("buildah", "rm", ctr, check=False)


def build(name: str, tag: str) -> str:
    image = f"localhost/inferstack/{name}:{tag}"
    dockerfile = REPO / "images" / f"{name}.Dockerfile"
    args = ["buildah", "bud", "--isolation", "chroot", "--layers", "--network", "host",
            "--build-arg", f"BASE={BASE}", "--build-arg", f"BUILD_BASE={BUILD_BASE}",
            "--ignorefile", str(dockerfile) + ".dockerignore", "-f", str(dockerfile), "-t", image]  # fmt: skip
    if HOST_CA.exists():
        args += ["--volume", f"{HOST_CA}:{HOST_CA}:ro"]
    print(f"building {image} ...", flush=True)
    run(*args, str(REPO))
    return image


# -------------------------------------------------------------------- checks


def podman(*args: str) -> list[str]:
    # Limits below podman's defaults (and this process's own): raising any needs
    # CAP_SYS_RESOURCE (see the module doc); 4096 of each is plenty for one process.
    return ["podman", "--runtime", "runc", *args[:1], "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", *args[1:]]


def hardened(*args: str) -> list[str]:
    """``podman run`` as the chart runs the pods: read-only root, a tmpfs /tmp, no capabilities."""
    return podman("run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges", "--network", "host", *args)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


INSPECT = r"""
import importlib.util, json, os, pathlib, shutil, sys
found = {
    "uid": os.getuid(),
    "tools": [t for t in ("gcc", "cc", "g++", "make", "ld", "as", "pip", "pip3") if shutil.which(t)],
    "modules": [m for m in ("pip", "setuptools", "ensurepip") if importlib.util.find_spec(m)],
    "caches": [str(p) for p in ("/root/.cache", "/tmp/.cache", "/src", "/dist") if os.access(p, os.F_OK)]
              + [str(p) for p in pathlib.Path("/var/lib/apt/lists").glob("*_*")]
              + [str(p) for p in pathlib.Path("/var/cache/apt").glob("*.bin")],
    "venv_wheels": [str(p) for p in pathlib.Path("/usr/share/python-wheels").glob("*.whl")],
}
try:
    open("/written-at-runtime", "w")
    found["root_writable"] = True
except OSError:
    found["root_writable"] = False
print(json.dumps(found))
"""


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def serve_check(image: str, args: list[str], url: str) -> bool:
    name = f"inferstack-check-{os.getpid()}-{free_port()}"
    proc = subprocess.Popen(hardened("--name", name, image, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_http(url, proc)
        if not ok and proc.poll() is not None:
            print(proc.stderr.read() if proc.stderr else "", file=sys.stderr)
        return ok
    finally:
        run("podman", "--runtime", "runc", "stop", "-t", "5", name, check=False)
        proc.wait(timeout=30)


def check(name: str, image: str) -> dict:
    out: dict = {"image": image}
    config = json.loads(run("podman", "image", "inspect", image).stdout)[0]
    out["user"] = config["Config"].get("User")
    out["size_mb"] = round(config["Size"] / 1e6, 1)
    base = json.loads(run("podman", "image", "inspect", BASE).stdout)[0]
    out["app_mb"] = round((config["Size"] - base["Size"]) / 1e6, 1)
    python = "/opt/inferstack/bin/python"
    # The contents as root (/root is 0700); the user and the read-only root as the image runs.
    contents = json.loads(run(*hardened("--user", "0:0", "--entrypoint", python, image, "-c", INSPECT)).stdout.strip().splitlines()[-1])
    as_user = json.loads(run(*hardened("--entrypoint", python, image, "-c", INSPECT)).stdout.strip().splitlines()[-1])
    out.update(contents)
    out.update(uid=as_user["uid"], root_writable=as_user["root_writable"] or contents["root_writable"])
    if name == "operator":
        help_ = run(*hardened(image, "--help"), check=False)
        out["entrypoint"] = help_.returncode == 0 and "inferstack-operator" in help_.stdout
        # Golden-set Jobs run this image's `python -m inferstack.golden` (it takes no --help: it runs the cases).
        golden = run(*hardened("--entrypoint", python, image, "-c", "import inferstack.golden.runner"), check=False)
        out["golden_job"] = golden.returncode == 0
    elif name == "router":
        help_ = run(*hardened(image, "--help"), check=False)
        port, metrics = free_port(), free_port()
        plan = Path(tempfile.mkdtemp()) / "plans"  # no plan: /healthz answers, /readyz would not
        plan.mkdir(mode=0o755)
        plan.parent.chmod(0o755)
        serving = _router_serves(image, plan, port, metrics)
        out["entrypoint"] = help_.returncode == 0 and "inferstack-router" in help_.stdout and serving
        shutil.rmtree(plan.parent, ignore_errors=True)
    else:
        port = free_port()
        out["entrypoint"] = serve_check(image, ["--port", str(port), "--served-model-name", "m"], f"http://127.0.0.1:{port}/health")
    out["ok"] = (
        out["user"] == f"{UID}:{UID}" and out["uid"] == int(UID) and not out["root_writable"] and bool(out["entrypoint"])
        and not out["tools"] and not out["modules"] and not out["caches"] and not out["venv_wheels"] and out.get("golden_job", True)
    )  # fmt: skip
    return out


def _router_serves(image: str, plan: Path, port: int, metrics: int) -> bool:
    name = f"inferstack-check-{os.getpid()}-{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics), "--metrics-host", "127.0.0.1",
            "--auth", "none", "--plan-file", "/plans"]  # fmt: skip
    cmd = hardened("--name", name, "--volume", f"{plan}:/plans:ro", image, *args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_http(f"http://127.0.0.1:{metrics}/healthz", proc)
        if not ok and proc.poll() is not None and proc.stderr:
            print(proc.stderr.read()[-2000:], file=sys.stderr)
        return ok
    finally:
        run("podman", "--runtime", "runc", "stop", "-t", "5", name, check=False)
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-check", action="store_true", help="build only")
    parser.add_argument("--only", choices=IMAGES, action="append", help="these images only (default: all)")
    parser.add_argument("--report", type=Path, help="write the checks as JSON here")
    args = parser.parse_args()
    missing = [t for t in ("buildah", "podman", "runc", "debootstrap") if not shutil.which(t)]
    if missing:
        print(f"missing: {' '.join(missing)} (apt-get install -y buildah podman runc debootstrap)", file=sys.stderr)
        return 2
    started = time.monotonic()
    ensure_bases()
    tag = version()
    built = {name: build(name, tag) for name in args.only or IMAGES}
    print(f"built in {time.monotonic() - started:.0f} s")
    if args.no_check:
        return 0
    results = [check(name, image) for name, image in built.items()]
    base = json.loads(run("podman", "image", "inspect", BASE).stdout)[0]
    print(f"\nbase {BASE}: {base['Size'] / 1e6:.1f} MB (Debian {SUITE} minbase + python3, from debootstrap)")
    print(f"{'image':<40} {'size MB':>8} {'app MB':>7}  user         read-only  entrypoint  no tools/pip/caches  ok")
    for r in results:
        clean = not (r["tools"] or r["modules"] or r["caches"] or r["venv_wheels"])
        print(f"{r['image']:<40} {r['size_mb']:>8} {r['app_mb']:>7}  {r['user']:<12} {not r['root_writable']!s:<10} {r['entrypoint']!s:<11} {clean!s:<20} {r['ok']}")
        if not clean:
            print(f"    found: tools={r['tools']} modules={r['modules']} caches={r['caches']} wheels={r['venv_wheels']}")
    if args.report:
        args.report.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
