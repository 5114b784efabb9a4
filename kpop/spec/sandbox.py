"""`sandbox:` section: where model-written code runs (see kpop.envs.sandbox), its limits, its pool."""

from typing import Literal

from pydantic import Field, model_validator

from kpop.spec.base import StrictModel, tagged_union


class BwrapBackendSpec(StrictModel):
    type: Literal["bwrap"] = Field("bwrap", description="Linux namespaces through bubblewrap, rlimits and cgroups (default).")
    python: str = Field("python3", min_length=1, description="Interpreter that runs `code` requests, resolved inside the sandbox.")
    ro_binds: list[str] = Field(default_factory=list, description="Extra absolute host paths mounted read-only (e.g. a venv for tests).")
    use_cgroups: bool = Field(True, description="Put each slot in pids+memory cgroups when the host allows it.")
    warm: bool = Field(True, description="Keep one bwrap sandbox per pool slot and run each execution in it (a launcher inside forks it as the slot's uid with per-execution rlimits; reset after each: its processes killed, /work and /tmp emptied, IPC objects and its uid's kernel keys removed). Its namespaces (network, IPC, mounts) are then shared by a slot's consecutive executions, and there is no user namespace; needs root, else fresh. false: new namespaces and mounts per execution (~+10 ms).")

    @model_validator(mode="after")
    def _absolute_binds(self) -> "BwrapBackendSpec":
        bad = [p for p in self.ro_binds if not p.startswith("/") or ".." in p.split("/")]
        if bad:
            raise ValueError(f"sandbox.backend.ro_binds must be absolute paths without '..': {bad}")
        return self


class DockerBackendSpec(StrictModel):
    type: Literal["docker"] = Field("docker", description="Containers through the Docker engine: a fresh one per execution, or warm ones (`warm`).")
    image: str = Field("kpop-sandbox:bookworm", min_length=1, description="Local image with python3 (deploy/docker_engine.sh builds it).")
    warm: bool = Field(False, description="Keep one running container per pool slot and run each execution in it (a launcher inside forks it; reset after each: its processes killed, /work and /tmp emptied, IPC removed); false: a fresh container per execution.")
    python: str = Field("python3", min_length=1, description="Interpreter that runs `code` requests inside the container.")
    base_url: str | None = Field(None, description="Engine address; None uses DOCKER_HOST or the local socket.")


class ProcessBackendSpec(StrictModel):
    type: Literal["process"] = Field("process", description="Plain child process, NO isolation: debugging only.")
    unsafe: bool = Field(False, description="Must be true: acknowledges that untrusted code runs on the host.")

    @model_validator(mode="after")
    def _needs_unsafe(self) -> "ProcessBackendSpec":
        if not self.unsafe:
            raise ValueError("the process sandbox backend runs untrusted code on the host without isolation; "
                             "set `unsafe: true` in sandbox.backend to use it anyway")
        return self


SandboxBackendSpec = tagged_union(BwrapBackendSpec, DockerBackendSpec, ProcessBackendSpec)


class SandboxLimitsSpec(StrictModel):
    wall_s: float = Field(5.0, gt=0, le=86400, description="Wall-clock limit of one execution, seconds (below rollout.env_step_timeout_s, which bounds the step that waits for it).")
    cpu_s: float = Field(5.0, gt=0, le=86400, description="CPU-time limit per process, seconds (whole seconds in effect).")
    memory_mib: int = Field(512, ge=16, le=1048576, description="Memory limit of one execution, MiB.")
    max_processes: int = Field(64, ge=1, le=65536, description="Processes/threads one execution may have at once.")
    max_file_mib: int = Field(16, ge=1, le=1048576, description="Largest file the code may write, MiB.")
    max_output_kib: int = Field(1024, ge=1, le=1048576, description="Cap on stdout and on stderr each, KiB; more kills the run.")
    max_output_files_mib: int = Field(16, ge=1, le=1048576, description="Total size of output files returned, MiB.")


class SandboxSpec(StrictModel):
    backend: SandboxBackendSpec = Field(default_factory=BwrapBackendSpec, description="Which sandbox backend runs the code.")
    limits: SandboxLimitsSpec = Field(default_factory=SandboxLimitsSpec, description="Limits of every execution of the run's environments (code tools and verifiers).")
    pool_size: int = Field(4, ge=1, le=256, description="Executions running at once per process; more requests queue.")
