"""An unsupported verl version is never patched, and fails with a message naming the fix."""

import json
import textwrap

import pytest

from tests.conftest import run_python
from verl_variance.integration import compat


def test_version_range():
    assert compat.check_verl_version("0.9.1") == "0.9.1"
    assert compat.check_verl_version("0.9.7") == "0.9.7"
    for bad in ("0.8.0", "0.9.0", "0.10.0", "1.0.0"):
        with pytest.raises(compat.UnsupportedVerlVersion, match=r"pip install 'verl>=0.9.1,<0.10'"):
            compat.check_verl_version(bad)


@pytest.fixture
def fake_old_verl(tmp_path):
    """A dist-info that makes importlib.metadata report verl 0.8.0 (the code imported is unchanged)."""
    info = tmp_path / "verl-0.8.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: verl\nVersion: 0.8.0\n")
    return str(tmp_path)


def test_unsupported_verl_is_not_patched_and_cpu_run_fails_clearly(fake_old_verl):
    code = textwrap.dedent(
        """
        import json
        import verl.utils.distributed, verl.workers.rollout.base
        from verl_variance.integration.compat import STATUS
        try:
            from verl.plugin.platform import get_platform
            get_platform()
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"version_error": STATUS.version_error, "patches": STATUS.patches_applied, "error": error}))
        """
    )
    result = run_python(code, env={"PYTHONPATH": fake_old_verl, "VERL_PLATFORM": "cpu"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["patches"] == []
    assert "verl 0.8.0 is not supported" in report["version_error"]
    assert report["error"].startswith("UnsupportedVerlVersion: verl 0.8.0 is not supported")
    assert "pip install 'verl>=0.9.1,<0.10'" in report["error"]


def test_strict_mode_raises_at_load(fake_old_verl):
    code = "import verl_variance.integration.plugin"
    result = run_python(
        code, env={"PYTHONPATH": fake_old_verl, "VERL_VARIANCE_STRICT": "1", "VERL_USE_EXTERNAL_PLUGINS": "none"}
    )
    assert result.returncode != 0
    assert "UnsupportedVerlVersion: verl 0.8.0 is not supported" in result.stderr
