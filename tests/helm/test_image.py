"""The Dockerfile, checked without a container engine (none runs here): its
build stage is scripts/install-deps itself, its runtime stage installs the
packages that own every shared library of mxd and mxctl and nothing for
building, and it runs as the user the Helm chart expects."""
import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("MX_BUILD_DIR", ROOT / "build" / "release"))
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages():
    """[(FROM line, [instructions with continuations joined])]"""
    out, text = [], re.sub(r"\\\n", " ", DOCKERFILE)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            out.append((line, []))
        else:
            out[-1][1].append(line)
    return out


def runtime_packages():
    runtime = stages()[-1][1]
    installs = [l for l in runtime if l.startswith("RUN ") and "apt-get install" in l]
    assert len(installs) == 1
    words = installs[0].split("apt-get install", 1)[1].split("&&")[0].split()
    return {w for w in words if not w.startswith("-")}


def owners(libs):
    """lib -> the Debian package that owns it (None if none), with one dpkg
    call; a library may be listed under /lib or /usr/lib (merged /usr)."""
    candidates = {}
    for lib in libs:
        for c in {lib, os.path.realpath(lib)}:
            candidates.setdefault(c, lib)
            candidates.setdefault(c[4:] if c.startswith("/usr/lib/") else "/usr" + c, lib)
    out = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True).stdout
    found = {lib: None for lib in libs}
    for line in out.splitlines():
        pkg, path = line.split(": ", 1)
        if path in candidates:
            found[candidates[path]] = pkg.split(":")[0]
    return found


def test_stages_are_debian_12_and_the_build_runs_install_deps():
    s = stages()
    assert len(s) == 2
    assert s[0][0].startswith("FROM debian:12 ") and s[1][0] == "FROM debian:12-slim"
    build = s[0][1]
    assert "COPY scripts/install-deps scripts/install-deps" in build
    assert "RUN scripts/install-deps" in build
    assert [l for l in build if "apt-get" in l] == [], "the build stage installs only through scripts/install-deps"


def test_runtime_stage_has_every_library_and_no_build_tools():
    pkgs = runtime_packages()
    libs = set()
    for binary in (BUILD_DIR / "mxd" / "mxd", BUILD_DIR / "control" / "mxctl"):
        assert binary.exists(), f"{binary}: build first"
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
        assert "not found" not in out
        libs |= set(re.findall(r"=> (/\S+)", out))
    needed = {}
    for lib, pkg in owners(libs).items():
        needed.setdefault(pkg, []).append(lib)
    assert None not in needed, f"libraries no package owns: {needed.get(None)}"
    missing = sorted(set(needed) - pkgs)
    assert not missing, f"runtime stage lacks {missing} (for {[needed[m] for m in missing]})"
    extra = sorted(p for p in pkgs - set(needed) if p != "ca-certificates")
    assert not extra, f"runtime stage installs packages nothing links: {extra}"
    assert not [p for p in pkgs if p.endswith("-dev") or p in ("build-essential", "cmake", "g++", "gcc")]


def test_image_user_paths_and_ports_match_the_chart():
    runtime = stages()[-1][1]
    assert "USER 10001:10001" in runtime
    values = yaml.safe_load((ROOT / "helm" / "mx" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001 and values["podSecurityContext"]["runAsGroup"] == 10001
    copy = next(l for l in runtime if l.startswith("COPY --from=build"))
    assert copy.endswith(" /usr/local/bin/") and "mxd/mxd" in copy and "control/mxctl" in copy
    for tpl in (ROOT / "helm" / "mx" / "templates").glob("*-deployment.yaml"):
        assert '["/usr/local/bin/mxd"]' in tpl.read_text(), tpl
    exposed = {int(p) for l in runtime if l.startswith("EXPOSE ") for p in l.split()[1:]}
    ports = values["ports"]
    assert exposed == {ports["smtp"], ports["queue"], ports["control"], ports["raft"], ports["metrics"], ports["health"]}
