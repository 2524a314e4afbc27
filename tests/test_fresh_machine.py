"""What a machine that never ran Ray meets: Ray 2.60's token auth makes `ray start --head`
refuse to start without ~/.ray/auth_token (only ray.init makes one). `make cluster-demo` and
the cluster tests start their head with `ray start`: as the first Ray command on a fresh clone
they failed ("Token authentication is enabled but no authentication token was found")."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT


def test_the_local_cluster_makes_rays_token_when_there_is_none(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    code = "from local_cluster.cluster import ensure_auth_token; ensure_auth_token()"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=120)
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) >= 16
    before = token.read_text()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=120)
    assert token.read_text() == before  # an existing token is kept
