"""The server against its own /openapi.json: schemathesis fuzzes every operation.

A live server on a tiny random model with a chat template and a 64-token context (so every
request finishes fast). schemathesis runs as its users run it (`st run`, every phase: the
schema's examples, coverage, fuzzing, stateful links) with all its checks, a fixed seed and
`EXAMPLES` generated cases per operation and phase, schema-valid and schema-violating. One
check is replaced: "schema-valid data must be accepted" becomes `accepted_unless_semantic`
(contract_checks.py), which lets a schema-valid request fail only with the documented
semantic 400s listed there, each a rule JSON Schema cannot state, its reason beside it.
Nothing else gets through: no other 4xx for valid data, no 5xx, no undocumented status, no
response off its schema, a 4xx for every invalid request. The document must also be valid
OpenAPI 3.1 (openapi-spec-validator).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from conftest import TINY_NAME, TINY_TEMPLATE
from live_server import start_server

EXAMPLES = 30  # generated cases per operation and phase
SEED = 20261206


@pytest.fixture(scope="module")
def contract_server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    template = folder / "template.jinja"
    template.write_text(TINY_TEMPLATE)
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--chat-template", str(template)]
    args += ["--dtype", "float32", "--num-kv-blocks", "64", "--max-model-len", "64"]
    yield from start_server(args, folder / "server.log")


def test_schema_is_valid_openapi_and_covers_every_route(contract_server):
    document = httpx.get(f"{contract_server.url}/openapi.json").json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 specification
    paths = document["paths"]
    for path, method in [
        ("/v1/completions", "post"),
        ("/v1/chat/completions", "post"),
        ("/tokenize", "post"),
        ("/detokenize", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model_id}", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/version", "get"),
        ("/metrics", "get"),
        ("/engine/snapshot", "get"),
    ]:
        operation = paths[path][method]
        assert "200" in operation["responses"], path
        if method == "post":
            assert operation["requestBody"]["required"], path
            assert {"400", "413", "415"} <= set(operation["responses"]), path
    streamed = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert (
        "text/event-stream" in streamed and "[DONE]" in streamed["text/event-stream"]["schema"]["description"]
    )
    schemas = document["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    assert completion["model"]["anyOf"][0]["enum"] == [TINY_NAME]
    assert {"minimum": 0, "maximum": 511}.items() <= completion["prompt"]["oneOf"][2]["items"].items()
    assert completion["n"]["maximum"] == 128 and completion["max_tokens"]["anyOf"][0]["maximum"] == 64
    snapshot = schemas["EngineSnapshotResponse"]["properties"]
    assert {"model", "totals", "replicas", "history"} <= set(snapshot)
    # The console's page and files are not API.
    assert "/" not in paths and not any(path.startswith("/console") for path in paths)
    # The same document every time (clients cache and diff it).
    assert httpx.get(f"{contract_server.url}/openapi.json").json() == document


def test_every_operation_keeps_its_contract(contract_server, tmp_path):
    st = Path(sys.executable).with_name("st")
    command = [str(st), "run", f"{contract_server.url}/openapi.json", "--checks", "all"]
    command += ["--exclude-checks", "positive_data_acceptance"]
    command += ["--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1", "--no-color"]
    judged = tmp_path / "judged.txt"
    env = dict(os.environ, SCHEMATHESIS_HOOKS="contract_checks", CONTRACT_CHECK_LOG=str(judged))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    report = done.stdout + done.stderr
    # The reproducing curl commands can be megabytes of generated JSON: keep the findings.
    findings = "\n".join(line[:500] for line in report.splitlines() if not line.lstrip().startswith("curl "))
    assert done.returncode == 0, findings[-12000:]
    # It ran what it says: every operation, and the replacement check judged the valid cases,
    # most of which succeeded.
    assert "11 selected / 11 total" in report and "No issues found" in report, findings[-3000:]
    statuses = judged.read_text().split()
    assert len(statuses) > 200 and sum(s == "200" for s in statuses) > len(statuses) / 2, statuses[:50]
    assert httpx.get(f"{contract_server.url}/health").status_code == 200
