"""How GitOps tools judge an InferenceStack: Argo CD's Lua health check and Flux's kstatus.

Shared by the tests that run them on fixtures captured from the e2e
(``tests/fixtures/status/*.json``) and by the e2e test that captures them.

* ``argocd_health`` runs ``charts/inferstack/argocd/health.lua`` with real Lua:
  Lua 5.1 from ``lupa``, the language version of gopher-lua, Argo CD's interpreter.
  The script gets ``obj`` as a global and returns ``{status, message}``, as in Argo CD.
* ``kstatus`` runs ``e2e/kstatus`` (upstream ``sigs.k8s.io/cli-utils/pkg/kstatus/status``,
  the library Flux's health checks use), built from the Go module proxy by its build.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HEALTH_LUA = REPO / "charts" / "inferstack" / "argocd" / "health.lua"
FIXTURES = REPO / "tests" / "fixtures" / "status"

# What each fixture must give: fixture name -> (Argo CD health, kstatus status).
# "stale-generation" is a Degraded stack whose new spec the operator has not observed yet.
EXPECTED = {
    "pending": ("Progressing", "InProgress"),
    "healthy": ("Healthy", "Current"),
    "progressing": ("Progressing", "InProgress"),
    "paused": ("Suspended", "InProgress"),
    "degraded": ("Degraded", "Failed"),
    "failed-stuck": ("Degraded", "Failed"),
    "failed-invalid-spec": ("Degraded", "Failed"),
    "stale-generation": ("Progressing", "InProgress"),
}
# The phase each fixture was captured in.
PHASES = {
    "pending": "Pending",
    "healthy": "Healthy",
    "progressing": "Progressing",
    "paused": "Paused",
    "degraded": "Degraded",
    "failed-stuck": "Failed",
    "failed-invalid-spec": "Failed",
    "stale-generation": "Degraded",
}


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD's health assessment would report them."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    to_lua = lua.eval(
        """function(src, obj)
             local env = setmetatable({obj = obj}, {__index = _G})
             local chunk = assert(loadstring(src, "health.lua"))
             setfenv(chunk, env)
             return chunk()
           end"""
    )
    # Integers stay integers (observedGeneration < generation compares numbers).
    hs = to_lua(HEALTH_LUA.read_text(), lua.table_from(obj, recursive=True))
    return str(hs["status"]), str(hs["message"] or "")


def kstatus_binary() -> str | None:
    """The built helper, building it if Go is there; None without Go."""
    if path := os.environ.get("INFERSTACK_KSTATUS_BIN"):
        return path
    if shutil.which("go") is None:
        return None
    out = subprocess.run([str(REPO / "e2e" / "kstatus" / "build.sh")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"e2e/kstatus/build.sh failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def kstatus(binary: str, files: list[Path]) -> dict[str, tuple[str, str]]:
    """file name -> (kstatus status, message)."""
    out = subprocess.run([binary, *map(str, files)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kstatus helper failed: {out.stderr}")
    results = [json.loads(line) for line in out.stdout.splitlines()]
    return {Path(r["file"]).name: (r["status"], r["message"]) for r in results}


def fixture_object(stack: dict[str, Any]) -> dict[str, Any]:
    """A captured stack without what changes from run to run (uid, resourceVersion, managedFields...)."""
    meta = stack["metadata"]
    return {
        "apiVersion": stack["apiVersion"],
        "kind": stack["kind"],
        "metadata": {"name": meta["name"], "namespace": "team-a", "generation": meta["generation"]},
        "spec": stack["spec"],
        "status": stack.get("status") or {},
    }
