"""The harness changes config.yaml only where tests/shipped_differences.py says, with a reason."""

from __future__ import annotations

from pathlib import Path

from tests.config_diff import flatten_app
from tests.harness import APP_NAME, load_config
from tests.shipped_differences import HARNESS_CHANGES


def harness_config() -> dict:
    """tests/harness.py's baseline without starting Serve (base_config reads only these)."""
    from tests.harness import ServeTestbed

    testbed = ServeTestbed.__new__(ServeTestbed)
    testbed.http_port = 18000
    testbed.model_store = Path("/store")
    return testbed.base_config()


def test_the_harness_differs_from_config_yaml_only_where_listed():
    shipped, harness = load_config(), harness_config()
    flat_shipped = {
        **{f"http_options.{k}": v for k, v in shipped["http_options"].items()},
        **flatten_app(shipped["applications"][0]),
    }
    flat_harness = {
        **{f"http_options.{k}": v for k, v in harness["http_options"].items()},
        **flatten_app(harness["applications"][0]),
    }
    differing = {
        k
        for k in flat_shipped.keys() | flat_harness.keys()
        if flat_shipped.get(k, object()) != flat_harness.get(k, object())
    }
    assert differing == set(HARNESS_CHANGES), (
        f"unlisted: {sorted(differing - set(HARNESS_CHANGES))}; "
        f"listed but equal: {sorted(set(HARNESS_CHANGES) - differing)}"
    )
    assert harness["applications"][0]["name"] == APP_NAME
