"""Build rsasgi's release wheel with profile-guided optimisation (PGO).

    python scripts/pgo_wheel.py                          # the wheel goes to dist/
    python scripts/pgo_wheel.py --fetch-llvm-profdata    # on Debian, without LLVM tools
    python scripts/pgo_wheel.py --out /tmp/wheels --training-seconds 5

Three builds' worth of work, about 20 minutes on 2 cores:

1. An instrumented wheel: the release profile (fat LTO, one codegen unit) with
   `-Cprofile-generate`, so every run of it counts which branches and calls it takes.
2. Training: the instrumented rsasgi, installed into a scratch directory put first on
   PYTHONPATH, serves the benchmark workloads one after another, rsasgi only, a few seconds
   each: `benches/run.py`'s ASGI, WSGI, static and TLS/HTTP/2 groups and
   `benches/ws_bench.py`'s WebSocket echo. Each server process writes its counts when it exits.
3. `llvm-profdata merge` turns the counts into one profile, and the final wheel is built from
   the same sources with `-Cprofile-use`: hot paths laid out together and inlined where the
   counts say so, cold ones (errors, startup) kept small.

Train on an otherwise idle machine: the counts follow what the server did, and on a busy
one it does other things (its threads park and wake more, batches are smaller), which the
build then optimises for. Measured on 2 cores: a wheel trained while another build ran spent
4-25% more CPU per WSGI request than one trained on an idle machine. The profile is made
for this checkout and thrown away; nothing is committed. The tools the
training needs are the benchmarks' (`pip install -r benches/requirements.txt`, `wrk`, `h2load`,
`taskset`). `llvm-profdata` must be the LLVM major version rustc was built with (`rustc -vV`):
it is looked for as `--llvm-profdata`, `$LLVM_PROFDATA`, rustup's `llvm-tools` component,
`llvm-profdata-N` or `llvm-profdata` on PATH, and a copy fetched before. With
`--fetch-llvm-profdata` on x86-64 Debian-like systems without one, the script downloads Debian's
`llvm-N` and `libllvmN` packages (with the libraries they need, checked against the archive's
signed index with gpgv) into ~/.cache/rsasgi/ and runs llvm-profdata from there with its own
C library, leaving the system untouched.

With `--bolt`, a fourth step lays the optimised library out once more after it is linked, with
LLVM's BOLT: the wheel is linked keeping its relocations (`--emit-relocs`), `llvm-bolt
--instrument` makes a copy that counts every branch it takes, the same training runs on that
copy, and `llvm-bolt` rewrites the library from those counts (blocks ordered by how often they
follow each other, functions by who calls whom, cold parts moved apart), which callgrind's cache
model puts at a quarter fewer instruction-cache misses per WSGI request (benches/README.md,
"Profile-guided builds"). The library then carries no debug information (BOLT drops it): a
panic's backtrace names functions without file and line. BOLT reads machine code, not LLVM's
bitcode, so any recent version will do; Debian has it as `bolt-19` and its instrumentation
runtime as `libbolt-19-dev`. About two minutes more.

The wheel is a normal release wheel: `pip install dist/rsasgi-*.whl`. Its speed against a
plain `pip install .` build is measured by the benchmarks as usual (benches/README.md).
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsasgi"
DEBIAN = "https://deb.debian.org/debian"
# Whole suites (not experimental or backports, whose indexes hold only their own uploads, so
# the C library llvm-profdata needs would be missing): unstable has the newest LLVM first.
DEBIAN_SUITES = ("sid", "forky", "trixie")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def say(message: str) -> None:
    print(f"== {message}", flush=True)


def rustc_llvm_major() -> int:
    out = subprocess.run(
        ["rustc", "-vV"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    match = re.search(r"^LLVM version: (\d+)", out, re.M)
    if not match:
        sys.exit(f"cannot tell rustc's LLVM version from `rustc -vV`:\n{out}")
    return int(match.group(1))


def llvm_major_of(tool: str) -> int | None:
    """The LLVM major version `tool --version` reports, or None when it does not run."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"LLVM version (\d+)", out)
    return int(match.group(1)) if match else None


def find_llvm_profdata(major: int, given: str | None) -> str | None:
    candidates = []
    if given:
        candidates.append(given)
    if os.environ.get("LLVM_PROFDATA"):
        candidates.append(os.environ["LLVM_PROFDATA"])
    sysroot = subprocess.run(
        ["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    candidates += glob.glob(f"{sysroot}/lib/rustlib/*/bin/llvm-profdata")
    for name in (f"llvm-profdata-{major}", "llvm-profdata"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    candidates.append(str(CACHE / f"llvm-{major}" / "llvm-profdata"))
    for tool in candidates:
        found = llvm_major_of(tool)
        if found == major:
            return tool
        chosen = tool in (given, os.environ.get("LLVM_PROFDATA"))
        if found is None and chosen:
            sys.exit(f"{tool} does not run (`{tool} --version` failed)")
        if found is not None and chosen:
            sys.exit(
                f"{tool} is LLVM {found}; rustc is LLVM {major}, and its profiles need {major}"
            )
        if found is not None:
            print(f"   {tool} is LLVM {found}, not {major}: passed over")
    return None


# ----------------------------------------------------------------- llvm-profdata from Debian


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def debian_index(suite: str, work: Path) -> dict[str, dict[str, str]] | None:
    """The suite's main/binary-amd64 package index, its InRelease checked with gpgv against the
    system's Debian archive keyring and the index against InRelease's checksum."""
    try:
        release = fetch(f"{DEBIAN}/dists/{suite}/InRelease")
    except OSError as err:
        print(f"   {suite}: no index ({err})")
        return None
    (work / "InRelease").write_bytes(release)
    verified = work / "Release"
    verified.unlink(missing_ok=True)
    # Only what the signature covers is read: gpgv writes the signed text out, and anything
    # around the signed block in the downloaded file is left behind.
    checked = subprocess.run(
        ["gpgv", "--keyring", DEBIAN_KEYRING, "--output", str(verified), str(work / "InRelease")],
        capture_output=True,
        text=True,
    )
    if checked.returncode != 0:
        sys.exit(f"the signature of Debian's {suite} index does not check out:\n{checked.stderr}")
    text = verified.read_text()
    if "SHA256:" not in text:
        return None
    sha_part = text.split("SHA256:", 1)[1]
    match = re.search(r"^ ([0-9a-f]{64}) +\d+ main/binary-amd64/Packages\.xz$", sha_part, re.M)
    if not match:
        return None
    packed = fetch(f"{DEBIAN}/dists/{suite}/main/binary-amd64/Packages.xz")
    if sha256(packed) != match.group(1):
        sys.exit(f"Debian's {suite} Packages.xz does not match its signed checksum")
    index: dict[str, dict[str, str]] = {}
    for stanza in lzma.decompress(packed).decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            index[fields["Package"]] = fields
    return index


def dependencies(fields: dict[str, str], index: dict[str, dict[str, str]]) -> list[str]:
    """The packages a package needs (Pre-Depends and Depends): of each set of alternatives,
    the first that `index` has. Exits when a set has none there (a virtual package, say)."""
    names = []
    clauses = ",".join(filter(None, [fields.get("Pre-Depends"), fields.get("Depends")]))
    for clause in clauses.split(","):
        alternatives = [a.split()[0].split(":")[0] for a in clause.split("|") if a.strip()]
        if not alternatives:
            continue
        found = next((name for name in alternatives if name in index), None)
        if found is None:
            sys.exit(f"{fields['Package']} needs {clause.strip()}, which the index does not have")
        names.append(found)
    return names


def fetch_llvm_profdata(major: int) -> str:
    """Downloads Debian's llvm-profdata for LLVM `major` into the cache; returns a wrapper that
    runs it with the C library and libraries that came with it."""
    if shutil.which("dpkg-deb") is None or not Path(DEBIAN_KEYRING).exists():
        sys.exit("--fetch-llvm-profdata needs a Debian-like system (dpkg-deb, the archive keyring)")
    if os.uname().machine != "x86_64":
        sys.exit("--fetch-llvm-profdata fetches x86-64 packages; install llvm-profdata yourself")
    home = CACHE / f"llvm-{major}"
    with tempfile.TemporaryDirectory(prefix="rsasgi-llvm-") as tmp:
        work = Path(tmp)
        for suite in DEBIAN_SUITES:
            say(f"looking for llvm-{major} in Debian {suite}")
            index = debian_index(suite, work)
            if index and f"llvm-{major}" in index and f"libllvm{major}" in index:
                break
        else:
            sys.exit(f"no Debian suite has llvm-{major}; install LLVM {major}'s llvm-profdata")
        # llvm-N itself (for the binary) without its dependencies (most are tools' libraries),
        # and libLLVM with everything it needs, the C and C++ runtimes included.
        wanted = [f"llvm-{major}"]
        queue = [f"libllvm{major}"]
        while queue:
            name = queue.pop()
            if name in wanted:
                continue
            wanted.append(name)
            queue += dependencies(index[name], index)
        root = work / "root"
        for name in wanted:
            fields = index[name]
            deb = fetch(f"{DEBIAN}/{fields['Filename']}")
            if sha256(deb) != fields["SHA256"]:
                sys.exit(f"{fields['Filename']} does not match the signed index")
            path = work / f"{name}.deb"
            path.write_bytes(deb)
            subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
            print(f"   {name} {fields['Version']}")
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        shutil.move(str(root), str(home / "root"))
    root = home / "root"
    # The file itself: a lib64 symlink in the package points at the system's loader.
    loaders = sorted(p for p in root.glob("**/ld-linux-x86-64.so.2") if not p.is_symlink())
    if not loaders:
        sys.exit("Debian's libc6 came without ld-linux-x86-64.so.2")
    loader = loaders[0]
    libs = ":".join(
        str(p)
        for p in (
            root / "usr/lib/x86_64-linux-gnu",
            root / "lib/x86_64-linux-gnu",
            root / f"usr/lib/llvm-{major}/lib",
        )
    )
    tool = root / f"usr/lib/llvm-{major}/bin/llvm-profdata"
    wrapper = home / "llvm-profdata"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{loader}" --inhibit-cache --library-path "{libs}" "{tool}" "$@"\n'
    )
    wrapper.chmod(0o755)
    if llvm_major_of(str(wrapper)) != major:
        sys.exit(f"the fetched llvm-profdata does not run: {wrapper} --version")
    return str(wrapper)


# ----------------------------------------------------------------------------- the builds


def build_wheel(python: str, out: Path, target: Path, rustflags: str) -> Path:
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    env["RUSTFLAGS"] = " ".join(filter(None, [env.get("RUSTFLAGS"), rustflags]))
    for name in ("CARGO_PROFILE_RELEASE_LTO", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS"):
        env.pop(name, None)  # the release profile as Cargo.toml sets it
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("rsasgi-*.whl"))
    subprocess.run(
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        env=env,
        check=True,
    )
    made = sorted(set(out.glob("rsasgi-*.whl")) - before) or sorted(out.glob("rsasgi-*.whl"))
    return max(made, key=lambda p: p.stat().st_mtime)


def install_site(python: str, wheel: Path, site: Path) -> None:
    """Installs `wheel` alone into a fresh `site` directory, for PYTHONPATH."""
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )


def busy_share(seconds: float = 2.0) -> float:
    """The share of all cores' time spent busy over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def train(python: str, site: Path, seconds: int, work: Path) -> None:
    busy = busy_share()
    if busy > 0.15:
        print(
            f"   warning: the machine is {busy:.0%} busy before the training starts; a profile "
            "taken on a busy machine makes a slower wheel (see this script's docstring)",
            flush=True,
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    common = ["--duration", str(seconds), "--warmup", "1"]
    runs = [
        [
            "benches/run.py",
            "--group",
            group,
            "--servers",
            "rsasgi",
            "--rounds",
            "1",
            *common,
            "--output",
            str(work / f"{group}.json"),
        ]
        for group in ("wsgi", "asgi", "tls", "static")
    ]
    runs.append(
        ["benches/ws_bench.py", "--servers", "rsasgi", *common, "--output", str(work / "ws.json")]
    )
    for argv in runs:
        say("training: " + " ".join(argv[:3]))
        subprocess.run([python, *argv], cwd=REPO, env=env, check=True)
    # A scenario that failed (the server did not answer, say) leaves no numbers but does not
    # fail the run: a profile without it would be a profile of less than the workload.
    for group in ("wsgi", "asgi", "tls", "static"):
        report = json.loads((work / f"{group}.json").read_text())
        served = report.get("results", {}).get(group, {}).get("rsasgi", {})
        missing = [name for name, run in served.items() if not run.get("requests_per_sec")]
        if not served or missing:
            sys.exit(f"training: the {group} group did not serve {missing or 'anything'}")
    echoed = json.loads((work / "ws.json").read_text()).get("results", {}).get("rsasgi", {})
    if not echoed.get("messages_per_sec"):
        sys.exit("training: the WebSocket echo did not run")


# ------------------------------------------------------------------------------------- BOLT

# What `llvm-bolt` does with the training's counts. ext-tsp orders a function's blocks so that
# the likely successor follows; cdsort places functions near their callers; the split moves
# what never ran (and landing pads) out of the hot pages; identical code folding merges
# duplicate instantiations. The GNU stack note keeps the library's stack not executable.
BOLT_OPTIMISATIONS = [
    "--reorder-blocks=ext-tsp",
    "--reorder-functions=cdsort",
    "--split-functions",
    "--split-all-cold",
    "--split-eh",
    "--icf=1",
    "--use-gnu-stack",
]


def find_llvm_bolt(given: str | None) -> tuple[Path, Path] | None:
    """`llvm-bolt` with its instrumentation runtime beside it, and `merge-fdata`; or None."""
    if given:
        found = [shutil.which(given)]
    else:
        names = ["llvm-bolt", *(f"llvm-bolt-{n}" for n in range(30, 16, -1))]
        found = [shutil.which(name) for name in names]
        found += sorted(glob.glob("/usr/lib/llvm-*/bin/llvm-bolt"), reverse=True)
    for tool in filter(None, found):
        # Resolved: Debian's llvm-bolt-N is a link into /usr/lib/llvm-N/bin, and llvm-bolt
        # looks for its runtime library relative to where it really is.
        bolt = Path(tool).resolve()
        merge = bolt.with_name("merge-fdata")
        runtime = bolt.parent.parent / "lib" / "libbolt_rt_instr.a"
        if merge.exists() and runtime.exists():
            return bolt, merge
        print(f"   {tool}: no merge-fdata or libbolt_rt_instr.a beside it: passed over")
    return None


def library_in(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if re.fullmatch(r"rsasgi/_rsasgi[^/]*\.so", n)]
    if len(names) != 1:
        sys.exit(f"{wheel}: expected one rsasgi/_rsasgi*.so, found {names}")
    return names[0]


def replace_in_wheel(wheel: Path, name: str, content: Path) -> None:
    """Puts `content` in the wheel as `name`, and its hash and size in the RECORD."""
    data = content.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rebuilt = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as old, zipfile.ZipFile(rebuilt, "w") as new:
        for info in old.infolist():
            body = old.read(info)
            if info.filename == name:
                body = data
            elif info.filename.endswith(".dist-info/RECORD"):
                lines = body.decode().splitlines()
                lines = [
                    f"{name},sha256={digest},{len(data)}" if line.split(",")[0] == name else line
                    for line in lines
                ]
                body = ("\n".join(lines) + "\n").encode()
            new.writestr(info, body, compress_type=zipfile.ZIP_DEFLATED)
    rebuilt.replace(wheel)


def bolt(python: str, wheel: Path, tools: tuple[Path, Path], work: Path, seconds: int) -> None:
    """Rewrites the wheel's library with BOLT from a training of its instrumented copy."""
    llvm_bolt, merge_fdata = tools
    name = library_in(wheel)
    original = work / "bolt-input.so"
    with zipfile.ZipFile(wheel) as archive:
        original.write_bytes(archive.read(name))
    site = work / "bolt-site"
    install_site(python, wheel, site)
    counts = work / "bolt-counts"
    shutil.rmtree(counts, ignore_errors=True)
    counts.mkdir()
    say("instrumenting the library with llvm-bolt")
    # One file per process: each server process writes its counts when it exits.
    subprocess.run(
        [
            str(llvm_bolt),
            str(original),
            "--instrument",
            "--instrumentation-file-append-pid",
            f"--instrumentation-file={counts / 'rsasgi'}",
            "-o",
            str(site / name),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (work / "bolt-training").mkdir(exist_ok=True)
    train(python, site, seconds, work / "bolt-training")
    written = sorted(counts.glob("*.fdata"))
    if not written:
        sys.exit("BOLT training: no server process wrote its counts")
    merged = work / "bolt.fdata"
    with merged.open("wb") as out:
        subprocess.run([str(merge_fdata), *map(str, written)], stdout=out, check=True)
    say(f"merged {len(written)} processes' counts; rewriting the library")
    optimised = work / "bolt-output.so"
    subprocess.run(
        [
            str(llvm_bolt),
            str(original),
            "-o",
            str(optimised),
            f"--data={merged}",
            *BOLT_OPTIMISATIONS,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    replace_in_wheel(wheel, name, optimised)


def missing_prerequisites(python: str) -> list[str]:
    """What the training needs and this machine lacks."""
    missing = [
        f"{tool} ({package})"
        for tool, package in (
            ("wrk", "apt-get install wrk"),
            ("h2load", "apt-get install nghttp2-client"),
            ("curl", "apt-get install curl"),
            ("taskset", "util-linux"),
        )
        if shutil.which(tool) is None
    ]
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec(sys.argv[1]) else 1)"
    for modules, package in (
        (["trustme"], "pip install trustme"),
        (["picows", "websockets"], "pip install picows"),
    ):
        if not any(subprocess.run([python, "-c", probe, m]).returncode == 0 for m in modules):
            missing.append(f"{modules[0]} ({package})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build rsasgi's release wheel with profile-guided optimisation.",
        epilog="Needs what the benchmarks need: pip install -r benches/requirements.txt, "
        "wrk, h2load (nghttp2-client), taskset.",
    )
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="wheel directory (dist)")
    parser.add_argument("--llvm-profdata", help="llvm-profdata of rustc's LLVM version")
    parser.add_argument(
        "--fetch-llvm-profdata",
        action="store_true",
        help="download Debian's llvm-profdata into ~/.cache/rsasgi when none is found",
    )
    parser.add_argument(
        "--training-seconds", type=int, default=3, help="seconds of load per scenario (3)"
    )
    parser.add_argument(
        "--work", type=Path, help="keep the builds and profiles here (default: a temporary dir)"
    )
    parser.add_argument(
        "--bolt",
        action="store_true",
        help="then lay the library out again with LLVM's BOLT, from a second training",
    )
    parser.add_argument("--llvm-bolt", help="the llvm-bolt to use with --bolt")
    args = parser.parse_args(argv)
    python = sys.executable
    bolt_tools = None
    if args.bolt:
        bolt_tools = find_llvm_bolt(args.llvm_bolt)
        if bolt_tools is None:
            print(
                "--bolt needs llvm-bolt with merge-fdata and its instrumentation runtime "
                "(libbolt_rt_instr.a) beside it: on Debian, apt-get install bolt-19 "
                "libbolt-19-dev; or pass --llvm-bolt PATH",
                file=sys.stderr,
            )
            return 1
        say(f"llvm-bolt: {bolt_tools[0]}")

    major = rustc_llvm_major()
    profdata = find_llvm_profdata(major, args.llvm_profdata)
    if profdata is None:
        if not args.fetch_llvm_profdata:
            print(
                f"no llvm-profdata of LLVM {major} (rustc's) found: install it (rustup component "
                f"add llvm-tools, or your system's llvm-{major}), pass --llvm-profdata PATH, or "
                "let --fetch-llvm-profdata download Debian's",
                file=sys.stderr,
            )
            return 1
        profdata = fetch_llvm_profdata(major)
    say(f"llvm-profdata: {profdata}")
    missing = missing_prerequisites(python)
    if missing:
        print(
            "the training runs the benchmarks, which need: " + ", ".join(missing),
            file=sys.stderr,
        )
        return 1

    # Absolute: the servers that write the counts run in the repository, not here.
    out = args.out.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="rsasgi-pgo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        wheel = build(python, profdata, work, out, args.training_seconds, bolt_tools)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    say(f"built {wheel}")
    return 0


def build(
    python: str,
    profdata: str,
    work: Path,
    out: Path,
    seconds: int,
    bolt_tools: tuple[Path, Path] | None = None,
) -> Path:
    raw = work / "raw"
    say("building the instrumented wheel")
    instrumented = build_wheel(
        python, work / "instrumented", work / "target-generate", f"-Cprofile-generate={raw}"
    )
    # Build scripts ran instrumented too and left their counts: only the server's count.
    shutil.rmtree(raw, ignore_errors=True)
    site = work / "site"
    install_site(python, instrumented, site)
    train(python, site, seconds, work)
    merged = work / "merged.profdata"
    subprocess.run([profdata, "merge", "-o", str(merged), str(raw)], check=True)
    # Named by its content: Cargo rebuilds a crate when RUSTFLAGS change, not when the file
    # they name does, so a kept --work directory must not reuse crates built from another
    # profile.
    profile = work / f"rsasgi-{sha256(merged.read_bytes())[:16]}.profdata"
    merged.rename(profile)
    say(f"merged the profiles into {profile}")
    say("building the optimised wheel")
    flags = f"-Cprofile-use={profile}"
    if bolt_tools is None:
        return build_wheel(python, out, work / "target-use", flags)
    # Linked keeping its relocations, which BOLT needs to move code; built aside, so that a
    # failed BOLT step leaves no half-made wheel in `out`.
    flags += " -Clink-arg=-Wl,--emit-relocs"
    wheel = build_wheel(python, work / "relocatable", work / "target-use", flags)
    bolt(python, wheel, bolt_tools, work, seconds)
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(str(wheel), str(out / wheel.name)))


if __name__ == "__main__":
    sys.exit(main())
