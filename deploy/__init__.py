"""Deployment: serving checkpoints and running on clusters.

- openai_api/: the one OpenAI-compatible HTTP layer (schemas, errors, prompting, generation,
  streaming, metrics, backends, app) used by `kpop serve` and by the training gateway
  (kpop.rollout.gateway).
- serve.py: `kpop serve CHECKPOINT` (backend chosen from the checkpoint); server_process.py runs it
  as a child process on loopback; smoke_model.py builds a checkpoint that replays reference episodes.
- docker/: GPU (training + serving) and CPU images; cluster/: Ray cluster config and guide.
- setup.sh, docker_engine.sh: environment set-up scripts.
"""
