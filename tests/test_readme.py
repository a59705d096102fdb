"""The README's runnable blocks, run as a new user would: in order, against `make run`'s stack.

A shell block marked `<!-- readme-test: NAME -->` (the line before its fence) is runnable; the
blocks of one NAME run in order as one bash script (`set -euo pipefail`), so later blocks see
the variables of earlier ones; each NAME on its own, in the README's order, on one stack. A
block marked `<!-- readme-file: NAME -->` is saved as that file first, as the README says to. The stack is the dev launcher (`python -m devstack`) on free
ports, its data dir `.data` in a temporary folder that is also the script's working directory
(the README's "in the checkout folder"); only the ports in the blocks are changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_devstack import REPO_ROOT, Launcher, free_port

MARK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: A block the README asks to save as a file (`<!-- readme-file: NAME -->`): written first.
FILE = re.compile(r"^<!-- readme-file: ([\w.-]+) -->\n```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SCRIPT_TIMEOUT = 300.0


def runnable_blocks(text: str) -> dict[str, list[str]]:
    """NAME -> its blocks, in the README's order."""
    blocks: dict[str, list[str]] = {}
    for name, body in MARK.findall(text):
        blocks.setdefault(name, []).append(body)
    return blocks


def on_ports(text: str, ports: dict[str, int]) -> str:
    """The README's default ports replaced by the stack's."""
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{ports['WFO_PORT']}")
    text = text.replace("127.0.0.1:7233", f"127.0.0.1:{ports['TEMPORAL_PORT']}")
    text = text.replace("127.0.0.1:8233", f"127.0.0.1:{ports['TEMPORAL_UI_PORT']}")
    return text.replace("127.0.0.1:9000", f"127.0.0.1:{ports['RECEIVER']}")  # the webhook receiver


def script(blocks: list[str], ports: dict[str, int]) -> str:
    return "set -euo pipefail\n" + on_ports("\n".join(blocks), ports)


def test_the_readme_marks_its_runnable_blocks() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = runnable_blocks(text)
    assert len(blocks.get("worked-example", [])) == 2, sorted(blocks)
    assert {"quick-start", "users", "webhooks"} <= set(blocks)
    assert sorted(name for name, _ in FILE.findall(text)) == ["receiver.py", "watch.py"]


@pytest.mark.slow
def test_the_runnable_blocks_run_as_written(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    ports = {"WFO_PORT": free_port(), "TEMPORAL_PORT": free_port(), "TEMPORAL_UI_PORT": free_port()}
    receiver = {"RECEIVER": free_port()}
    # The README calls the venv's tools by their path in the checkout.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    for name, body in FILE.findall(readme):
        (tmp_path / name).write_text(on_ports(body, ports | receiver))
    launcher = Launcher(tmp_path / ".data", ports)
    try:
        launcher.wait_for_banner()
        outputs = {
            name: run_block(tmp_path, script(blocks, ports | receiver))
            for name, blocks in runnable_blocks(readme).items()
        }
    finally:
        launcher.kill()
    assert re.search(r'"name":\s*"Sample Workflow"', outputs["quick-start"]), outputs["quick-start"]
    worked = outputs["worked-example"]
    # Step 3 shows the approval's blocker; 4 the failure; 5 the completion; 6 the cancel.
    assert re.search(r'"description":\s*"Task review waits for approval"', worked), worked
    for status in ("FAILED", "COMPLETED", "CANCELLED"):
        assert re.search(rf'"status":\s*"{status}"', worked), worked
    # "In Temporal": the execution's workflow, found by its search attribute and shown.
    assert worked.count("wfo-") >= 2, worked
    # 7: the subscription printed each task's state and ended with the execution.
    assert "'taskDefinitionId': 'publish', 'status': 'COMPLETED'" in worked, worked
    hooks = outputs["webhooks"]
    assert re.search(r'"success":\s*true', hooks), hooks
    log = (tmp_path / "receiver.log").read_text()
    assert log.count("signature ok") >= 2 and "BAD SIGNATURE" not in log, log
    assert re.search(r'"status":\s*"DELIVERED"', hooks), hooks
    users = outputs["users"]
    assert re.search(r'"role":\s*"viewer"', users) and re.search(r'"active":\s*false', users), users


def run_block(folder: Path, text: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFO_", "TEMPORAL_"))}
    run = subprocess.run(
        ["bash", "-c", text],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output
