"""vLLM worker extension: two-phase, all-or-nothing weight updates from safetensors bytes.

vLLM mixes this class into its worker (`worker_extension_cls=
"kpop.rollout.vllm_worker_ext.KPopWorkerExtension"`), so its methods run in the worker process
and are reached through `AsyncLLM.collective_rpc(name, args=...)`. Tensors cannot be rpc arguments
in multiprocess mode, hence safetensors bytes.

Protocol (driven by `VLLMEngine.update_weights`):
1. `kpop_stage_chunk(version, index, data)` stores one chunk; nothing in the model changes.
2. `kpop_commit(version, num_chunks)` checks that all chunks of that version arrived, validates
   names/shapes against the model folder, and only then reloads every weight in one
   `reload_weights` call (which repacks CPU linears; editing parameters in place would not).
3. `kpop_discard()` drops a staged update (after a timeout or a frontend error).
Invariant: the model is touched only in step 2, and only with a complete, validated set of weights.
"""

from __future__ import annotations

import time

from kpop.rollout.weight_sync import WeightSyncError, chunks_to_state_dict, expected_params_from_dir, validate_update


class KPopWorkerExtension:
    _kpop_staged_version: int | None = None
    _kpop_staged: dict[int, bytes] | None = None
    _kpop_expected: dict | None = None

    def kpop_stage_chunk(self, version: int, index: int, data: bytes) -> int:
        if self._kpop_staged_version != version or self._kpop_staged is None:
            # A new version starts a fresh staging area; a stale partial update is dropped.
            self._kpop_staged_version = version
            self._kpop_staged = {}
        self._kpop_staged[index] = bytes(data)
        return len(self._kpop_staged)

    def kpop_discard(self) -> None:
        self._kpop_staged_version = None
        self._kpop_staged = None

    def kpop_commit(self, version: int, num_chunks: int) -> dict:
        """Validate and load the staged update of `version`.

        Returns {"ok": bool, "stage": "validate" | "reload" | "done", "error": str, "seconds": float}
        rather than raising, so the frontend can tell a rejected update (model untouched) from a
        failure inside `reload_weights` (model state unknown).
        """
        staged = self._kpop_staged or {}
        try:
            if self._kpop_staged_version != version or sorted(staged) != list(range(num_chunks)):
                raise WeightSyncError(
                    f"update {version}: staged chunks {sorted(staged)} of version "
                    f"{self._kpop_staged_version}, expected {num_chunks} chunks"
                )
            chunks = [staged[i] for i in range(num_chunks)]
            validate_update(chunks, self._kpop_expected_params())
            weights = chunks_to_state_dict(chunks)
        except Exception as exc:  # noqa: BLE001 (reported to the frontend, which raises WeightSyncError)
            self.kpop_discard()
            return {"ok": False, "stage": "validate", "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
        self.kpop_discard()
        start = time.perf_counter()
        try:
            self.reload_weights(weights_iterator=iter(weights.items()))
        except Exception as exc:  # noqa: BLE001 (reported to the frontend, which raises WeightSyncError)
            return {"ok": False, "stage": "reload", "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
        return {"ok": True, "stage": "done", "error": "", "seconds": time.perf_counter() - start}

    def _kpop_expected_params(self) -> dict:
        if self._kpop_expected is None:
            self._kpop_expected = expected_params_from_dir(self.vllm_config.model_config.model)
        return self._kpop_expected
