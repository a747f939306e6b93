"""Load a SkyPilot task YAML offline and print what SkyPilot makes of it, as JSON on stdout.

Runs in a separate venv with `skypilot==0.14.1` (SkyPilot pins `click<8.2`, the project needs
click>=8.4.2), started by tests/integration/test_sky_yaml.py with `HOME` and `SKY_RUNTIME_DIR`
pointing at a temp folder, so nothing lands in the real `~/.sky`.

    python sky_probe.py load TASK.yaml [--env K=V ...]
        the parsed task: resources per candidate, envs, secret names, storage mounts
    python sky_probe.py optimize TASK.yaml --clouds lambda,runpod [--gpus RTX4090:1] [--no-mounts]
        the optimizer's choice (minimum cost) over the catalogs under
        `$HOME/.sky/catalogs/v8`, with the given clouds faked as enabled (as SkyPilot's own
        tests do: `sky check` would call the clouds' APIs)

The result is one stdout line starting with `SKY_PROBE_RESULT `; a YAML that SkyPilot rejects
exits 1 with the error message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

RESULT_MARK = "SKY_PROBE_RESULT "


def _task(path: str, envs: list[str]) -> Any:
    import sky

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    overrides = [tuple(item.split("=", 1)) for item in envs]
    return sky.Task.from_yaml_config(config, env_overrides=overrides or None)


def _load(task: Any) -> dict[str, Any]:
    from sky.skylet import constants

    return {
        "name": task.name,
        "num_nodes": task.num_nodes,
        "resources": sorted((r.to_yaml_config() for r in task.resources), key=lambda r: json.dumps(r, default=str)),
        "envs": task.envs,
        "secret_refs": sorted(ref.name for ref in task._managed_secret_refs),  # `KEY: null` secrets
        "storage_mounts": {path: {"name": s.name, "mode": s.mode.value, "stores": sorted(str(k) for k in s.stores)}
                           for path, s in task.storage_mounts.items()},
        # The variables SkyPilot exports to `run` on every node (names from its own constants).
        "node_env_names": sorted([constants.SKYPILOT_NUM_NODES, constants.SKYPILOT_NODE_IPS,
                                  constants.SKYPILOT_NUM_GPUS_PER_NODE, constants.SKYPILOT_NODE_RANK,
                                  constants.TASK_ID_ENV_VAR]),
        "setup": task.setup,
        "run": task.run,
    }


def enable_clouds(clouds: list[str]) -> None:
    """Fake `sky check` having enabled `clouds`, as SkyPilot's own tests do (the real check calls the clouds)."""
    from sky import check as sky_check
    from sky.utils import registry

    enabled = [registry.CLOUD_REGISTRY.from_str(name) for name in clouds]
    sky_check.get_cached_enabled_clouds_or_refresh = lambda *args, **kwargs: enabled
    sky_check.check_capability = lambda *args, **kwargs: {}


def _optimize(task: Any, clouds: list[str], gpus: str | None, no_mounts: bool) -> dict[str, Any]:
    import sky
    from sky import optimizer

    enable_clouds(clouds)
    if gpus:
        task.set_resources_override({"accelerators": gpus})
    if no_mounts:
        task.set_storage_mounts({})
    with sky.Dag() as dag:
        dag.add(task)
    dag = optimizer.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    best = dag.tasks[0].best_resources
    return {"cloud": str(best.cloud), "instance_type": best.instance_type, "accelerators": best.accelerators,
            "use_spot": best.use_spot, "usd_per_hour": round(best.get_cost(3600), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["load", "optimize"])
    parser.add_argument("path")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--clouds", default="")
    parser.add_argument("--gpus")
    parser.add_argument("--no-mounts", action="store_true")
    args = parser.parse_args()
    try:
        task = _task(args.path, args.env)
    except Exception as exc:  # SkyPilot's schema errors come as several exception types
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.action == "load":
        result = _load(task)
    else:
        result = _optimize(task, args.clouds.split(","), args.gpus, args.no_mounts)
    # One marked line: SkyPilot prints its own progress payloads to stdout too.
    print(RESULT_MARK + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
