"""Ray actor wrapper of the Learner (one actor per data-parallel rank)."""

from __future__ import annotations

import ray

from kpop.learner.learner import Learner

LearnerActor = ray.remote(Learner)
