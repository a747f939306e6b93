"""`sky_api.submit`: what SkyPilot's client SDK raises becomes one `LaunchError` (fast, no SkyPilot).

SkyPilot cannot be imported in the project's environment (click pin), so a stand-in `sky` module
raises exceptions of SkyPilot's own class names; the slow test `tests/integration/test_sky_server.py`
gets the real ones from SkyPilot's API server.
"""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dream_job.errors import EXIT_TRANSIENT, EXIT_USER
from dream_job.launch import LaunchError, plan_launch, sky_api
from dream_job.spec import load_spec

JOB = "jobs/dream-s1k.yaml"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


# SkyPilot's exception classes (sky/exceptions.py), by name and base.
class InvalidSkyPilotConfigError(ValueError):
    pass


class StorageSpecError(ValueError):
    pass


class StorageNameError(StorageSpecError):
    pass


class NoCloudAccessError(Exception):
    pass


class ResourcesUnavailableError(Exception):
    pass


class ApiServerConnectionError(RuntimeError):
    pass


class CloudError(Exception):
    def __init__(self, message: str, cloud_provider: str, error_type: str) -> None:
        super().__init__(message)
        self.cloud_provider, self.error_type = cloud_provider, error_type


@pytest.fixture
def plan(tmp_path: Path, in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An on-demand AWS plan from the shipped price snapshot (no SkyPilot catalog under HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = load_spec(JOB, ["budget.use_spot=false", "budget.clouds=[aws]", "budget.max_cost_yuan=400"])
    return plan_launch(spec, Path(JOB), task_yaml=Path("sky.yaml"), environ={"DREAM_JOB_RUNS_BUCKET": "my-runs"},
                       now=NOW)


def _submit_raising(exc: Exception, plan: Any, monkeypatch: pytest.MonkeyPatch) -> LaunchError:
    """Run `submit` (dry run) against a `sky` whose `launch` raises `exc`; return the error it raised."""
    def launch(*args: Any, **kwargs: Any) -> Any:
        raise exc

    sky = types.ModuleType("sky")
    sky.launch = launch  # type: ignore[attr-defined]
    # A managed plan puts its project config (the controller's place) in effect around the calls.
    sky.skypilot_config = types.SimpleNamespace(reload_config=lambda: None)  # type: ignore[attr-defined]
    sky.stream_and_get = lambda request_id: request_id  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sky", sky)
    with pytest.raises(LaunchError) as caught:
        sky_api.submit(object(), plan, dryrun=True)
    return caught.value


def test_a_rejected_task_is_one_sentence_naming_the_run_job_and_task_file(plan: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    exc = InvalidSkyPilotConfigError("Invalid resources YAML: Found unsupported field '_docker_username_for_runpod'.")
    error = _submit_raising(exc, plan, monkeypatch)
    assert error.exit_code == EXIT_USER
    assert error.message == f"SkyPilot rejects run `{plan.run_id}` of `{JOB}` (task `sky.yaml`)"
    assert error.caused_by == ["InvalidSkyPilotConfigError: Invalid resources YAML: Found unsupported field "
                               "'_docker_username_for_runpod'."]
    assert error.hint == (f"fix `sky.yaml` as SkyPilot says (or restore it: `git checkout sky.yaml`), "
                          f"or the job file `{JOB}`")


def test_skypilots_colours_and_extra_lines_become_cause_lines(plan: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    exc = NoCloudAccessError("Cloud access is not set up. Run: \x1b[1msky check\x1b[0m\n\n  • see the docs\n")
    error = _submit_raising(exc, plan, monkeypatch)
    assert error.caused_by == ["NoCloudAccessError: Cloud access is not set up. Run: sky check", "• see the docs"]
    assert error.hint == "set up access to `aws` and check it: `sky check aws`"


@pytest.mark.parametrize(("exc", "hint_start"), [
    (StorageNameError("Invalid store name: name bx must be between 3 (min) and 63 (max) characters long."),
     "the run bucket is `RUNS_BUCKET`"),
    (ResourcesUnavailableError("Task 'x' requires aws which is not enabled."), "SkyPilot found no `{instance}` in"),
])
def test_hints_follow_the_kind_of_failure(plan: Any, monkeypatch: pytest.MonkeyPatch, exc: Exception,
                                          hint_start: str) -> None:
    error = _submit_raising(exc, plan, monkeypatch)
    assert error.exit_code == EXIT_USER and error.hint.startswith(hint_start.format(instance=plan.instance_type))


@pytest.mark.parametrize("exc", [
    ApiServerConnectionError("Could not connect to SkyPilot API server at http://127.0.0.1:1."),
    CloudError('botocore error (EndpointConnectionError): Could not connect to the endpoint URL', "AWS",
               "EndpointConnectionError"),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
])
def test_network_and_api_server_failures_are_transient(plan: Any, monkeypatch: pytest.MonkeyPatch,
                                                       exc: Exception) -> None:
    error = _submit_raising(exc, plan, monkeypatch)
    assert error.exit_code == EXIT_TRANSIENT
    assert error.caused_by[0].startswith(f"{type(exc).__name__}: ")
    if isinstance(exc, ApiServerConnectionError):
        assert error.message == f"SkyPilot's API server cannot be reached, so run `{plan.run_id}` of `{JOB}` was not launched"
    else:
        assert error.message == f"a network failure stopped SkyPilot while launching run `{plan.run_id}` of `{JOB}`"


def test_a_cloud_error_that_is_not_the_network_is_the_users_to_fix(plan: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    error = _submit_raising(CloudError("botocore error (AccessDenied): no", "AWS", "ClientError"), plan, monkeypatch)
    assert error.exit_code == EXIT_USER
    assert not sky_api.is_transient(ValueError("x")) and sky_api.is_transient(ConnectionResetError())
