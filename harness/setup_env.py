"""The set-up behind `bash run.sh`: an environment with torch and pyproject.toml's dependencies, the
project importable in it. Standard library only (packaging is used when importable), so that it runs
before anything is installed; nothing here imports the rest of harness.

    python -m harness.setup_env venv .venv   # run by the invoking python3: make .venv unless it exists
    python -m harness.setup_env install      # run by the environment's python: torch, GPU check, deps

`venv`: when the invoking interpreter imports torch, .venv sees that torch (and every package next to
it): --system-site-packages, plus a .pth with the invoking interpreter's own site directories (when it
is itself a venv, --system-site-packages alone would expose only its base's). Otherwise a plain venv.

`install`: torch is installed only when none imports, and then as the pinned CPU wheel; a torch that
imports is never replaced. GPUs visible (nvidia-smi -L, /dev/nvidia0) while torch cannot use CUDA stop
the set-up unless SPBENCH_ALLOW_CPU=1. Of pyproject's [project] dependencies only the missing or too
old ones are pip-installed; the project becomes importable by `pip install -e . --no-deps
--no-build-isolation` (offline) or, without a usable setuptools, by a .pth naming the repository root.
A stamp in the environment (pyproject.toml's hash and the root) skips the dependency check next time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED_TORCH = "torch==2.13.0"  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
ALLOW_CPU = "SPBENCH_ALLOW_CPU"
PTH_SITE = "spbench-invoking-site.pth"  # in a new .venv: the invoking interpreter's site directories
PTH_ROOT = "spbench-root.pth"  # the repository root, when no editable install is possible
PIP = ["-m", "pip", "-q", "--disable-pip-version-check"]


def say(msg: str) -> None:
    print(f"setup: {msg}", flush=True)


class SetupError(Exception):
    """A set-up step failed; the message says what to do."""


# ---- requirements: pyproject.toml, specifiers, installed versions ----


def _toml_arrays(text: str, table: str, key: str) -> list[str]:
    """The strings of the array `key = [...]` in `[table]`: enough TOML for pyproject's requirement
    lists when tomllib (Python >= 3.11) is missing."""
    current, lines, i = None, text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.\-\"]+)\s*\]", line)
        if header:
            current = header.group(1).replace('"', "")
        elif current == table and re.match(rf"^\"?{re.escape(key)}\"?\s*=\s*\[", line):
            chunk = line[line.index("[") + 1 :]
            while True:  # collect the array up to its closing bracket (outside strings and comments)
                items, closed = _scan_strings(chunk)
                if closed or i + 1 >= len(lines):
                    return items
                i += 1
                chunk += "\n" + lines[i]
        i += 1
    return []


def _scan_strings(chunk: str) -> tuple[list[str], bool]:
    """Quoted strings in `chunk` (basic "..." and literal '...'), skipping # comments; whether a `]`
    closes the array."""
    items: list[str] = []
    j = 0
    while j < len(chunk):
        c = chunk[j]
        if c == "#":
            nl = chunk.find("\n", j)
            j = len(chunk) if nl < 0 else nl
        elif c in "\"'":
            end = j + 1
            while end < len(chunk) and chunk[end] != c:
                end += 2 if c == '"' and chunk[end] == "\\" else 1
            if end >= len(chunk):
                return items, False
            s = chunk[j + 1 : end]
            items.append(s.encode().decode("unicode_escape") if c == '"' and "\\" in s else s)
            j = end + 1
        elif c == "]":
            return items, True
        else:
            j += 1
    return items, False


def pyproject(path: str) -> dict[str, list[str]]:
    """{'dependencies': [...], 'build': [...]} from a pyproject.toml."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib
    except ImportError:
        text = raw.decode()
        return {
            "dependencies": _toml_arrays(text, "project", "dependencies"),
            "build": _toml_arrays(text, "build-system", "requires"),
        }
    data = tomllib.loads(raw.decode())
    return {
        "dependencies": list(data.get("project", {}).get("dependencies", [])),
        "build": list(data.get("build-system", {}).get("requires", [])),
    }


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^;()]*)\)?\s*(?:;(.*))?$")


def _release(v: str) -> tuple[int, ...]:
    """The release numbers of a version: '2.11.0+cu130' -> (2, 11, 0), '1.3.2.dev0' -> (1, 3, 2)."""
    m = re.match(r"^\s*v?(?:\d+!)?(\d+(?:\.\d+)*)", v)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def _fallback_contains(spec: str, version: str) -> bool:
    """Specifier check on release numbers alone (no pre-release or local-version rules), for when
    packaging is not importable."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.match(r"^(===|~=|==|!=|<=|>=|<|>)\s*(.+)$", clause)
        if not m:
            return False
        op, want = m.group(1), m.group(2).strip()
        if op in ("==", "!=") and want.endswith(".*"):
            prefix = _release(want[:-2])
            hit = have[: len(prefix)] + (0,) * max(0, len(prefix) - len(have)) == prefix
            ok = hit if op == "==" else not hit
        elif op == "~=":
            w = _release(want)
            ok = _cmp(have, w) >= 0 and have[: len(w) - 1] == w[:-1]
        elif op == "===":
            ok = version.strip() == want
        else:
            c = _cmp(have, _release(want))
            ok = {"==": c == 0, "!=": c != 0, "<=": c <= 0, ">=": c >= 0, "<": c < 0, ">": c > 0}[op]
        if not ok:
            return False
    return True


def parse_requirement(req: str) -> tuple[str, str, str | None]:
    """(name, specifier, marker) of a requirement string such as 'hydra-core>=1.3,<1.4'."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        m = _REQ.match(req)
        if not m:
            raise SetupError(f"cannot read the requirement {req!r} in pyproject.toml") from None
        return m.group(1), m.group(3).strip(), (m.group(4) or "").strip() or None
    r = Requirement(req)
    return r.name, str(r.specifier), str(r.marker) if r.marker else None


def satisfies(version: str, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return _fallback_contains(spec, version)
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return _fallback_contains(spec, version)


def _marker_applies(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        return True  # checked anyway; pip skips it if the marker does not hold
    return Marker(marker).evaluate()


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(reqs: list[str]) -> list[tuple[str, str]]:
    """(requirement, why) for each requirement not installed or too old."""
    out = []
    for req in reqs:
        name, spec, marker = parse_requirement(req)
        if not _marker_applies(marker):
            continue
        have = installed_version(name)
        if have is None:
            out.append((req, "not installed"))
        elif not satisfies(have, spec):
            out.append((req, f"have {have}"))
    return out


# ---- torch and GPUs ----


def torch_info() -> dict | None:
    """Version, CUDA build, CUDA usability and location of the importable torch, or None."""
    importlib.invalidate_caches()
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Failed to initialize NumPy" before numpy is installed
            warnings.simplefilter("ignore")
            import torch
    except Exception:
        return None
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "available": bool(torch.cuda.is_available()),
        "file": os.path.dirname(torch.__file__),
    }


def describe(t: dict) -> str:
    build = f"CUDA {t['cuda']}" if t["cuda"] else f"ROCm {t['hip']}" if t["hip"] else "CPU only"
    return f"torch {t['version']}, {build}"


def visible_gpus() -> list[str]:
    """What says GPUs are here: nvidia-smi -L's GPU lines, or /dev/nvidia0."""
    seen = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            seen = [line.strip() for line in res.stdout.splitlines() if line.strip().startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            pass
    if not seen and os.path.exists("/dev/nvidia0"):
        seen = ["/dev/nvidia0 exists"]
    return seen


def check_gpus(t: dict | None, in_venv: bool) -> None:
    """Stop loudly when GPUs are visible but torch cannot use them (the sweep would quietly run gloo on
    CPU), unless SPBENCH_ALLOW_CPU=1."""
    if t is not None and t["available"]:
        return
    gpus = visible_gpus()
    if not gpus:
        return
    which = (
        f"{describe(t)} at {t['file']} (torch.cuda.is_available() is False)"
        if t
        else f"none importable by {sys.executable}"
    )
    lines = [
        "GPUs are visible but " + ("torch cannot use them:" if t else "there is no torch to use them:"),
        "  nvidia-smi: " + "; ".join(gpus),
        f"  python: {sys.executable}",
        f"  torch: {which}",
    ]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        lines.append(f"  CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
    lines.append(
        "Install a CUDA build of torch into python3 (or into the active environment)"
        + (", delete .venv" if in_venv else "")
        + " and run again,"
    )
    if os.environ.get(ALLOW_CPU) == "1":
        say("!" * 72)
        for line in lines[:-1]:
            say(line)
        say(f"{ALLOW_CPU}=1: going on without the GPUs (CPU torch, gloo).")
        say("!" * 72)
        return
    lines.append(
        f"or set {ALLOW_CPU}=1 to go on without the GPUs ("
        + ("this torch" if t else f"the CPU wheel {PINNED_TORCH}")
        + ", gloo sweep)."
    )
    bar = "setup: " + "!" * 72
    raise SetupError("\n".join([bar, *("setup: " + line for line in lines), bar]))


# ---- the two steps ----


def site_dirs() -> list[str]:
    """This interpreter's site directories: site-packages (its base's too when it is a venv with system
    site packages), and the user site when enabled."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def make_venv(path: str) -> None:
    """Run by the invoking python3: create `path` unless it holds a python already."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, "bin", "python")):
        say(f"using {os.path.relpath(path)} (delete it to re-create it from python3)")
        return
    if sys.version_info < (3, 10):  # noqa: UP036 -- python3 runs this before any venv: it may be older
        raise SetupError(
            f"python3 at {sys.executable} is {sys.version.split()[0]}; spbench needs Python >= 3.10"
        )
    import venv

    t = torch_info()
    if t is None:
        check_gpus(None, in_venv=False)
        say(f"using python3 at {sys.executable} (no torch: the CPU wheel {PINNED_TORCH} will be installed)")
        say(f"creating {os.path.relpath(path)}")
        venv.EnvBuilder(with_pip=True).create(path)
        return
    say(f"using python3 at {sys.executable} ({describe(t)})")
    say(f"creating {os.path.relpath(path)} with system site packages")
    # No pip of its own (ensurepip's would also bring an old setuptools that shadows python3's): the
    # pip among python3's packages installs into the venv it runs in.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = os.path.join(path, "bin", "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirs = site_dirs()
    with open(os.path.join(purelib, PTH_SITE), "w") as f:
        f.write(f"# written by spbench's set-up: the site directories of {sys.executable}\n")
        for d in dirs:  # addsitedir also reads the .pth files there (editable installs, ...)
            f.write(f"import site; site.addsitedir({d!r})\n")
    say(f"{os.path.relpath(path)} sees the site packages of {sys.executable}: {', '.join(dirs)}")
    if subprocess.run([python, "-c", "import pip"], capture_output=True).returncode != 0:
        say(
            f"no pip among the site packages of {sys.executable}: "
            f"installing one into {os.path.relpath(path)} (ensurepip)"
        )
        subprocess.run([python, "-m", "ensurepip", "--default-pip"], capture_output=True, check=True)


def pip(args: list[str], what: str) -> None:
    res = subprocess.run([sys.executable, *PIP, "install", *args])
    if res.returncode != 0:
        raise SetupError(
            f"pip could not install {what} (exit {res.returncode}); is the package index "
            "reachable (pip's index-url, proxy, PIP_* variables)?"
        )


def importable_from_root() -> bool:
    """Whether harness and methods resolve to this repository, seen from outside it."""
    code = (
        "import importlib.util as u, os; s = [u.find_spec(n) for n in ('harness', 'methods')]; "
        "print(*[os.path.dirname(x.origin) if x and x.origin else '' for x in s])"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    want = [os.path.join(ROOT, n) for n in ("harness", "methods")]
    return res.returncode == 0 and [os.path.realpath(p) for p in res.stdout.split()] == [
        os.path.realpath(p) for p in want
    ]


def make_importable(build_reqs: list[str]) -> None:
    purelib = sysconfig.get_paths()["purelib"]
    st = installed_version("setuptools")
    can_build = (
        st is not None
        and not missing(build_reqs)
        and (satisfies(st, ">=70.1") or installed_version("wheel") is not None)
    )  # older setuptools need wheel
    if can_build:
        say("pip install -e . --no-deps --no-build-isolation")
        res = subprocess.run(
            [sys.executable, *PIP, "install", "-e", ROOT, "--no-deps", "--no-build-isolation"],
            capture_output=True,
            text=True,
        )
        if res.returncode == 0 and importable_from_root():
            stale = os.path.join(purelib, PTH_ROOT)
            if os.path.exists(stale):
                os.remove(stale)
            return
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["harness not importable"]
        say(f"editable install failed ({tail[0]}); writing a .pth instead")
    else:
        say(
            f"no setuptools for an editable install here (setuptools {st or 'missing'}); "
            "writing a .pth instead"
        )
    with open(os.path.join(purelib, PTH_ROOT), "w") as f:
        f.write(ROOT + "\n")
    if not importable_from_root():
        raise SetupError(
            f"harness is not importable from {ROOT} after writing {os.path.join(purelib, PTH_ROOT)}"
        )
    say(f"{PTH_ROOT} in {purelib} puts {ROOT} on the path")


def install() -> None:
    """Run by the environment's python."""
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(ROOT, ".venv"))
    t = torch_info()
    if t is None:
        check_gpus(None, in_venv)
        say(f"no torch in {sys.prefix}: installing the CPU wheel {PINNED_TORCH}")
        pip([PINNED_TORCH], PINNED_TORCH)
        t = torch_info()
        if t is None:
            raise SetupError(f"{PINNED_TORCH} installed but `import torch` still fails in {sys.executable}")
    say(f"python {sys.executable}: {describe(t)}, from {t['file']}")
    check_gpus(t, in_venv)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        digest = hashlib.sha1(f.read() + ROOT.encode()).hexdigest()[:12]
    stamp = os.path.join(sys.prefix, f".spbench-{digest}")
    if os.path.exists(stamp):
        say("pyproject.toml unchanged since the last set-up: dependency check skipped")
        return
    reqs = pyproject(os.path.join(ROOT, "pyproject.toml"))
    todo = []
    for req, why in missing(reqs["dependencies"]):
        if parse_requirement(req)[0].lower() == "torch":  # torch imports: it is never (re)installed
            say(f"torch {t['version']} does not satisfy {req!r}: kept (torch is never replaced here)")
        else:
            todo.append((req, why))
    if todo:
        say(
            f"installing {len(todo)} missing: "
            + ", ".join(r if why == "not installed" else f"{r} ({why})" for r, why in todo)
        )
        pip([r for r, _ in todo], ", ".join(r for r, _ in todo))
    else:
        say(f"all {len(reqs['dependencies'])} dependencies present")
    make_importable(reqs["build"])
    try:
        with open(stamp, "w"):
            pass
    except OSError:
        say(f"cannot write the stamp {stamp}: the dependency check runs again next time")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["venv"] and len(argv) == 2:
            make_venv(argv[1])
        elif argv == ["install"]:
            install()
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except SetupError as e:
        msg = str(e)
        print(msg if msg.startswith("setup: ") else f"setup: {msg}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if (
        __package__ in (None, "")
        and sys.path
        and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))
    ):
        del sys.path[0]  # run by path: harness/'s modules must not shadow top-level ones
    sys.exit(main(sys.argv[1:]))
