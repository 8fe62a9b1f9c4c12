"""The contracts by the ecosystem's rules: `buf lint` finds nothing in protos/,
and `buf breaking` finds no breaking change against the previous commit.

buf comes from npm (tools/package.json; `make test` and `make lint` install it).
Without it the tests skip, unless CI=true, where they fail. Exceptions to buf's
rules are recorded, each with its reason, in buf.yaml.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import google.api
import pytest

from tests.support.servers import ROOT

BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
THIRD_PARTY = ROOT / "protos" / "third_party"
# googleapis-common-protos ships the .proto files beside its generated modules.
GOOGLEAPIS = Path(next(iter(google.api.__path__))).parent.parent


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        reason = f"buf is not installed at {BUF.relative_to(ROOT)} (cd tools && npm ci)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=60, check=False)


def test_buf_lint_finds_nothing_in_the_contracts() -> None:
    linted = buf("lint")
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")


def test_buf_breaking_finds_no_breaking_change_against_the_previous_commit() -> None:
    previous = git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
    if previous.returncode != 0:
        # A first commit, or a shallow clone that holds only this one.
        pytest.skip("no previous commit in this clone to compare the contracts with")
    if git("cat-file", "-e", "HEAD~1:buf.yaml").returncode != 0:
        pytest.skip("the previous commit predates buf.yaml: the contracts were not under buf")
    archive = git("archive", "--format=tar", "HEAD~1", "buf.yaml", "protos")
    assert archive.returncode == 0, archive.stderr.decode()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        checked = buf("breaking", "--against", tmp)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_buf_breaking_would_catch_a_breaking_change(tmp_path: Path) -> None:
    # The check above can fail: the contracts with a field removed are refused.
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos", ignore=shutil.ignore_patterns("*.py*"))
    shutil.copy(ROOT / "buf.yaml", copy / "buf.yaml")
    leads = copy / "protos" / "crm" / "leads" / "v1" / "leads.proto"
    text = leads.read_text()
    assert "  string email = 4" in text
    leads.write_text("\n".join(line for line in text.splitlines()
                               if not line.startswith("  string email = 4")))
    checked = buf("breaking", str(copy), "--against", str(ROOT))
    assert checked.returncode != 0 and "email" in checked.stdout


@pytest.mark.parametrize("name", sorted(p.relative_to(THIRD_PARTY).as_posix()
                                        for p in THIRD_PARTY.rglob("*.proto")))
def test_the_vendored_google_protos_are_the_wheels_own(name: str) -> None:
    assert filecmp.cmp(THIRD_PARTY / name, GOOGLEAPIS / name, shallow=False)
