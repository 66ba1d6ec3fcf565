"""Fixtures for the ds4-server SDK tests (issue #4).

Builds ds4-server with the non-default `test-hooks` feature into its own target directory (the
default binary never has the hook), generates a tiny random model with the real V4 vocabulary,
starts the server on a free port with an API key, and hands out configured `openai` and
`anthropic` clients. Pins: tools/sdk-venv.sh. Overrides: DS4_SERVER_BIN, DS4_TEST_MODEL.
"""

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import anthropic
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sdk-test-key"


def _target_dir() -> Path:
    base = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return base / "sdk-test-hooks"


def _server_bin() -> Path:
    if os.environ.get("DS4_SERVER_BIN"):
        return Path(os.environ["DS4_SERVER_BIN"])
    target = _target_dir()
    subprocess.run(
        ["cargo", "build", "--release", "-p", "ds4-server", "--features", "test-hooks"],
        cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)},
    )
    return target / "release" / "ds4-server"


def _model(tmp: Path) -> Path:
    if os.environ.get("DS4_TEST_MODEL"):
        return Path(os.environ["DS4_TEST_MODEL"])
    tok = ROOT / "tests/fixtures/tokenizer/tokenizer.json"
    if not tok.exists():
        subprocess.run(["bash", str(ROOT / "tools/fetch-tokenizer.sh")], check=True)
    out = tmp / "tiny.gguf"
    subprocess.run(
        ["cargo", "run", "--release", "--quiet", "--bin", "ds4-gguf", "--", "tiny",
         "--tokenizer", str(tok), "--out", str(out)],
        cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(_target_dir())},
    )
    return out


@pytest.fixture(scope="session")
def base_url():
    with tempfile.TemporaryDirectory() as tmp:
        binary = _server_bin()
        model = _model(Path(tmp))
        log = open(Path(tmp) / "server.log", "w+")
        proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--port", "0", "-c", "2048", "-n", "64",
             "--api-key", API_KEY, "--test-hooks"],
            stderr=log, stdout=log,
        )
        try:
            url = None
            for _ in range(600):
                log.seek(0)
                m = re.search(r"listening on (http://[0-9.:]+)", log.read())
                if m:
                    url = m.group(1)
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            if url is None:
                log.seek(0)
                raise RuntimeError("ds4-server did not start:\n" + log.read())
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture()
def oai(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture()
def claude(base_url):
    return anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0)
