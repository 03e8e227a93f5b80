"""`make audit`: pip-audit over both pinned requirement sets, honest about whether it could look anything up.

The sets: the gateway's (pyproject.toml's dependencies and requirements-dev.txt) and the model servers'
(services/vllm/requirements.txt), each pin as written (`--no-deps`), and, where a virtual environment is
installed (.venv, .venv-vllm), every package in it: what those pins resolved to, transitive ones included.

pip-audit needs an advisory service: PyPI's per-version JSON API or OSV. Where neither answers, pip-audit
does not fail: it reports every package as "not found" and still prints "No known vulnerabilities found".
So this first asks each service about a canary, a release with a published advisory (requests 2.31.0); a
service that does not name one is not used. With none usable it prints one line saying so and exits 0 (no
data is not a pass, and it is not a failure of the code either). Otherwise every vulnerability found fails
the run unless `.pip-audit-ignore` lists its id with the reason it is accepted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IGNORE_FILE = ROOT / ".pip-audit-ignore"
CANARY = ("requests", "2.31.0")  # GHSA-9wx4-h78v-vm56 (CVE-2024-35195), published 2024
SERVICES = {
    "pypi": f"https://pypi.org/pypi/{CANARY[0]}/{CANARY[1]}/json",
    "osv": "https://api.osv.dev/v1/query",
}


@dataclass
class Probe:
    service: str
    usable: bool
    detail: str


@dataclass
class Finding:
    target: str
    package: str
    version: str
    vuln_id: str
    aliases: list[str] = field(default_factory=list)
    fix_versions: list[str] = field(default_factory=list)


def probe(service: str, timeout_s: float) -> Probe:
    """Whether `service` answers the canary with at least one vulnerability."""
    url = SERVICES[service]
    if service == "osv":
        body = json.dumps({"package": {"name": CANARY[0], "ecosystem": "PyPI"}, "version": CANARY[1]}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    else:
        request = urllib.request.Request(url)
    host = urllib.parse.urlparse(url).netloc
    try:
        # bandit B310: the URLs are the constants above (https), never input.
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # nosec B310
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return Probe(service, False, f"{host} answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(service, False, f"{host} did not answer ({reason})")
    except ValueError:
        return Probe(service, False, f"{host} answered something that is not JSON")
    key = "vulns" if service == "osv" else "vulnerabilities"
    if not payload.get(key):
        return Probe(service, False, f"{host} answered with no advisory for {CANARY[0]} {CANARY[1]}")
    return Probe(service, True, f"{host} answers")


def read_ignores(path: Path = IGNORE_FILE) -> dict[str, str]:
    """`ID  # reason` lines (blank lines and lines starting with # are comments); an id without a reason is
    an error: an accepted vulnerability is always explained."""
    ignores: dict[str, str] = {}
    if not path.exists():
        return ignores
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vuln_id, _, reason = line.partition("#")
        if not reason.strip():
            raise ValueError(f"{path.name}:{number}: {vuln_id.strip()} has no reason (`ID  # why it is accepted`)")
        ignores[vuln_id.strip()] = reason.strip()
    return ignores


def gateway_pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The gateway's runtime pins, as requirement lines (requirements-dev.txt is read by pip-audit itself)."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def targets(workdir: Path) -> list[tuple[str, list[str]]]:
    """(name, pip-audit arguments) for each set to audit."""
    pins = workdir / "gateway-requirements.txt"
    pins.write_text("\n".join(gateway_pins()) + "\n")
    result = [
        ("gateway pins", ["-r", str(pins), "-r", str(ROOT / "requirements-dev.txt"), "--no-deps", "--disable-pip"]),
        ("model server pins", ["-r", str(ROOT / "services/vllm/requirements.txt"), "--no-deps", "--disable-pip"]),
    ]
    for name, venv in (("gateway environment", ROOT / ".venv"), ("model server environment", ROOT / ".venv-vllm")):
        where = site_packages(venv)
        if where is not None:
            result.append((f"{name} ({venv.name})", ["--path", str(where), "--skip-editable"]))
    return result


def findings(target: str, report: dict[str, Any]) -> tuple[list[Finding], list[str]]:
    """The vulnerabilities in one pip-audit JSON report, and the packages it could not look up."""
    found, skipped = [], []
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped.append(f"{dep['name']}: {dep['skip_reason']}")
        for vuln in dep.get("vulns", []):
            found.append(
                Finding(
                    target,
                    dep["name"],
                    dep.get("version", "?"),
                    vuln["id"],
                    vuln.get("aliases", []),
                    vuln.get("fix_versions", []),
                )
            )
    return found, skipped


def judge(found: Iterable[Finding], ignores: dict[str, str]) -> tuple[list[Finding], list[tuple[Finding, str]]]:
    """(not accepted, accepted with its reason): a finding is accepted when its id or an alias is listed."""
    failing, accepted = [], []
    for finding in found:
        reason = next((ignores[i] for i in [finding.vuln_id, *finding.aliases] if i in ignores), None)
        if reason is None:
            failing.append(finding)
        else:
            accepted.append((finding, reason))
    return failing, accepted


def run_pip_audit(service: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    pip_audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent)) or "pip-audit"
    command = [pip_audit, "-s", service, "-f", "json", "--progress-spinner", "off", "--timeout", "10", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)  # nosec B603
    if not done.stdout.strip():
        raise RuntimeError(f"pip-audit {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def main(argv: list[str] | None = None, ignore_file: Path = IGNORE_FILE) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--probe-timeout", type=float, default=5.0, help="seconds for each service's canary")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for each pip-audit run")
    args = parser.parse_args(argv)
    ignores = read_ignores(ignore_file)

    probes = [probe(service, args.probe_timeout) for service in SERVICES]
    usable = next((p for p in probes if p.usable), None)
    if usable is None:
        print(
            "pip-audit SKIPPED: no vulnerability data reachable from this machine ("
            + "; ".join(f"{p.service}: {p.detail}" for p in probes)
            + "); nothing was checked"
        )
        return 0

    failing: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="citadel-audit-") as tmp:
        for target, target_args in targets(Path(tmp)):
            try:
                report = run_pip_audit(usable.service, target_args, args.timeout)
            except (subprocess.TimeoutExpired, RuntimeError) as exc:
                print(f"pip-audit SKIPPED: {usable.service} stopped answering during {target} ({exc})")
                return 0
            found, skipped = findings(target, report)
            count = len(report.get("dependencies", []))
            if count and len(skipped) == count:
                print(f"pip-audit {target} SKIPPED: {usable.service} knows none of its {count} packages")
                continue
            bad, accepted = judge(found, ignores)
            failing += bad
            print(
                f"pip-audit {target}: {count - len(skipped)} of {count} packages looked up, "
                f"{len(found)} known vulnerabilities, {len(bad)} not accepted"
            )
            for finding, reason in accepted:
                print(f"  accepted {finding.vuln_id} in {finding.package} {finding.version}: {reason}")
            for line in skipped:
                print(f"  not looked up: {line}")
    for finding in failing:
        fix = ", ".join(finding.fix_versions) or "none yet"
        print(f"VULNERABLE {finding.package} {finding.version}: {finding.vuln_id} (fixed in: {fix}) [{finding.target}]")
    if failing:
        print(f"pip-audit: {len(failing)} vulnerabilities not accepted: upgrade, or list each in {IGNORE_FILE.name}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
